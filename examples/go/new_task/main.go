// new_task puts one task on the durable queue "task_queue" for the workers.
//
// Work queues, the producer half. Each dot in the message stands for one second of work:
//
//	go run ./new_task First message.
//	go run ./new_task Second message..
//
// The queue is durable and the message persistent, so a task survives a broker restart
// until a worker has acknowledged it. The channel is in confirm mode: new_task reports the
// task as sent only once the broker has confirmed it, which for a persistent message on a
// durable queue means it is on disk.
//
// The broker's URL comes from AMQP_URL (default amqp://guest:guest@localhost:5672/).
package main

import (
	"context"
	"log"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const defaultURL = "amqp://guest:guest@localhost:5672/"

func brokerURL() string {
	if url := os.Getenv("AMQP_URL"); url != "" {
		return url
	}
	return defaultURL
}

func failOnError(err error, what string) {
	if err != nil {
		log.Fatalf("%s: %s", what, err)
	}
}

func main() {
	conn, err := amqp.Dial(brokerURL())
	failOnError(err, "Failed to connect to the broker")
	defer conn.Close()

	ch, err := conn.Channel()
	failOnError(err, "Failed to open a channel")
	defer ch.Close()

	// Durable: the queue itself survives a restart. Every program that declares it must
	// say so, since a redeclaration with other flags is refused (406 PRECONDITION_FAILED).
	q, err := ch.QueueDeclare(
		"task_queue", // name
		true,         // durable
		false,        // delete when unused
		false,        // exclusive
		false,        // no-wait
		nil,          // arguments
	)
	failOnError(err, "Failed to declare a queue")

	failOnError(ch.Confirm(false), "Failed to put the channel in confirm mode")
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 1))

	body := "hello"
	if len(os.Args) > 1 {
		body = strings.Join(os.Args[1:], " ")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	err = ch.PublishWithContext(ctx,
		"",     // exchange
		q.Name, // routing key
		false,  // mandatory
		false,  // immediate
		amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			ContentType:  "text/plain",
			Body:         []byte(body),
		})
	failOnError(err, "Failed to publish a message")

	select {
	case confirm, ok := <-confirms:
		if !ok {
			log.Fatal("The channel was closed before the broker confirmed the task")
		}
		if !confirm.Ack {
			log.Fatalf("The broker refused the task (basic.nack): %s", body)
		}
	case <-ctx.Done():
		log.Fatalf("No confirm from the broker: %s", ctx.Err())
	}
	log.Printf(" [x] Sent %s", body)
}

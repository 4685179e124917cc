// worker takes tasks from the durable queue "task_queue", one at a time, until interrupted.
//
// Work queues, the consumer half. Start several workers, then run new_task: each task goes
// to one worker, and each dot in it takes the worker one second.
//
//	go run ./worker
//
// Fair dispatch: with a prefetch of 1 the broker sends a worker its next task only after
// it has acknowledged the last one, so a busy worker is skipped instead of being handed a
// backlog. A task is acknowledged after it is done: if a worker dies halfway, the broker
// gives the task to another worker.
//
// The broker's URL comes from AMQP_URL (default amqp://guest:guest@localhost:5672/).
package main

import (
	"bytes"
	"log"
	"os"
	"os/signal"
	"syscall"
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

	q, err := ch.QueueDeclare(
		"task_queue", // name
		true,         // durable
		false,        // delete when unused
		false,        // exclusive
		false,        // no-wait
		nil,          // arguments
	)
	failOnError(err, "Failed to declare a queue")

	// At most one unacknowledged task at a time on this consumer.
	err = ch.Qos(
		1,     // prefetch count
		0,     // prefetch size (no limit)
		false, // global: per consumer, not per channel
	)
	failOnError(err, "Failed to set the prefetch")

	msgs, err := ch.Consume(
		q.Name, // queue
		"",     // consumer tag, chosen by the broker
		false,  // auto-ack: no, the worker acknowledges each task when it is done
		false,  // exclusive
		false,  // no-local
		false,  // no-wait
		nil,    // arguments
	)
	failOnError(err, "Failed to register a consumer")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)

	log.Printf(" [*] Waiting for messages. To exit press CTRL+C")
	for {
		select {
		case d, ok := <-msgs:
			if !ok {
				log.Fatal("The channel or the connection was closed")
			}
			log.Printf("Received a message: %s", d.Body)
			work := time.Duration(bytes.Count(d.Body, []byte("."))) * time.Second
			time.Sleep(work)
			log.Printf("Done")
			failOnError(d.Ack(false), "Failed to acknowledge a task")
		case <-stop:
			// An unacknowledged task goes back to the queue when the channel closes.
			return
		}
	}
}

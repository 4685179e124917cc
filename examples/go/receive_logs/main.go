// receive_logs prints every message published on the fanout exchange "logs" while it runs.
//
// Publish/subscribe, the consumer half. Each receive_logs has a queue of its own, so every
// one of them gets every message.
//
//	go run ./receive_logs
//
// The broker's URL comes from AMQP_URL (default amqp://guest:guest@localhost:5672/).
package main

import (
	"log"
	"os"
	"os/signal"
	"syscall"

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

	err = ch.ExchangeDeclare(
		"logs",   // name
		"fanout", // type
		true,     // durable
		false,    // auto-delete
		false,    // internal
		false,    // no-wait
		nil,      // arguments
	)
	failOnError(err, "Failed to declare an exchange")

	// An empty name asks the broker to choose one (amq.gen-...). Exclusive: the queue
	// belongs to this connection and is deleted when it closes.
	q, err := ch.QueueDeclare(
		"",    // name
		false, // durable
		false, // delete when unused
		true,  // exclusive
		false, // no-wait
		nil,   // arguments
	)
	failOnError(err, "Failed to declare a queue")

	err = ch.QueueBind(
		q.Name, // queue
		"",     // binding key, ignored by a fanout exchange
		"logs", // exchange
		false,  // no-wait
		nil,    // arguments
	)
	failOnError(err, "Failed to bind the queue")

	msgs, err := ch.Consume(
		q.Name, // queue
		"",     // consumer tag, chosen by the broker
		true,   // auto-ack
		false,  // exclusive
		false,  // no-local
		false,  // no-wait
		nil,    // arguments
	)
	failOnError(err, "Failed to register a consumer")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)

	log.Printf(" [*] Waiting for logs. To exit press CTRL+C")
	for {
		select {
		case d, ok := <-msgs:
			if !ok {
				log.Fatal("The channel or the connection was closed")
			}
			log.Printf(" [x] %s", d.Body)
		case <-stop:
			return
		}
	}
}

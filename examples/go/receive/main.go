// receive prints every message that arrives on the queue "hello", until interrupted.
//
// Hello world, the consumer half: start it, then run send.
//
//	go run ./receive
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

	// The same declaration as send's, so that whichever starts first creates the queue.
	q, err := ch.QueueDeclare(
		"hello", // name
		false,   // durable
		false,   // delete when unused
		false,   // exclusive
		false,   // no-wait
		nil,     // arguments
	)
	failOnError(err, "Failed to declare a queue")

	// Automatic acknowledgement: the broker forgets a message as soon as it has sent it.
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

	log.Printf(" [*] Waiting for messages. To exit press CTRL+C")
	for {
		select {
		case d, ok := <-msgs:
			if !ok {
				log.Fatal("The channel or the connection was closed")
			}
			log.Printf("Received a message: %s", d.Body)
		case <-stop:
			return
		}
	}
}

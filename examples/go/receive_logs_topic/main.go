// receive_logs_topic prints the log messages, published on the topic exchange
// "logs_topic" while it runs, whose routing key matches one of the patterns it is given.
//
// Topics, the consumer half. "*" matches exactly one word, "#" zero or more:
//
//	go run ./receive_logs_topic "#"                     everything
//	go run ./receive_logs_topic "kern.*"                every kernel message
//	go run ./receive_logs_topic "*.critical"            every critical message
//	go run ./receive_logs_topic "kern.*" "*.critical"   both
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
	patterns := os.Args[1:]
	if len(patterns) == 0 {
		log.Fatalf("Usage: %s BINDING_KEY... (for instance: \"kern.*\" \"*.critical\")", os.Args[0])
	}

	conn, err := amqp.Dial(brokerURL())
	failOnError(err, "Failed to connect to the broker")
	defer conn.Close()

	ch, err := conn.Channel()
	failOnError(err, "Failed to open a channel")
	defer ch.Close()

	err = ch.ExchangeDeclare(
		"logs_topic", // name
		"topic",      // type
		true,         // durable
		false,        // auto-delete
		false,        // internal
		false,        // no-wait
		nil,          // arguments
	)
	failOnError(err, "Failed to declare an exchange")

	// A server-named queue of this connection's own, deleted when it closes.
	q, err := ch.QueueDeclare(
		"",    // name
		false, // durable
		false, // delete when unused
		true,  // exclusive
		false, // no-wait
		nil,   // arguments
	)
	failOnError(err, "Failed to declare a queue")

	// A message that matches several patterns still reaches the queue once.
	for _, pattern := range patterns {
		log.Printf("Binding queue %s to exchange %s with routing key %s",
			q.Name, "logs_topic", pattern)
		err = ch.QueueBind(
			q.Name,       // queue
			pattern,      // binding key
			"logs_topic", // exchange
			false,        // no-wait
			nil,          // arguments
		)
		failOnError(err, "Failed to bind the queue")
	}

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
			log.Printf(" [x] %s: %s", d.RoutingKey, d.Body)
		case <-stop:
			return
		}
	}
}

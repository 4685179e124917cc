// receive_logs_direct prints the log messages of the severities it is given, published on
// the direct exchange "logs_direct" while it runs.
//
// Routing, the consumer half:
//
//	go run ./receive_logs_direct warning error
//	go run ./receive_logs_direct info
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
	severities := os.Args[1:]
	if len(severities) == 0 {
		log.Fatalf("Usage: %s SEVERITY... (for instance: info warning error)", os.Args[0])
	}

	conn, err := amqp.Dial(brokerURL())
	failOnError(err, "Failed to connect to the broker")
	defer conn.Close()

	ch, err := conn.Channel()
	failOnError(err, "Failed to open a channel")
	defer ch.Close()

	err = ch.ExchangeDeclare(
		"logs_direct", // name
		"direct",      // type
		true,          // durable
		false,         // auto-delete
		false,         // internal
		false,         // no-wait
		nil,           // arguments
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

	// One binding per severity: a message reaches the queue if its routing key equals any
	// of them, and reaches it once even if it matches several bindings.
	for _, severity := range severities {
		log.Printf("Binding queue %s to exchange %s with routing key %s",
			q.Name, "logs_direct", severity)
		err = ch.QueueBind(
			q.Name,        // queue
			severity,      // binding key
			"logs_direct", // exchange
			false,         // no-wait
			nil,           // arguments
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

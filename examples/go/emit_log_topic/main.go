// emit_log_topic publishes one log message on the topic exchange "logs_topic", with a
// routing key of dot-separated words such as "kern.critical" (facility.severity).
//
// Topics, the producer half:
//
//	go run ./emit_log_topic kern.critical "A critical kernel error"
//	go run ./emit_log_topic [ROUTING_KEY [MESSAGE...]]   (default: anonymous.info hello)
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

	// A topic exchange matches the routing key word by word against binding patterns,
	// where "*" stands for exactly one word and "#" for zero or more.
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

	key, body := "anonymous.info", "hello"
	if len(os.Args) > 1 && os.Args[1] != "" {
		key = os.Args[1]
	}
	if len(os.Args) > 2 {
		body = strings.Join(os.Args[2:], " ")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	err = ch.PublishWithContext(ctx,
		"logs_topic", // exchange
		key,          // routing key
		false,        // mandatory
		false,        // immediate
		amqp.Publishing{
			ContentType: "text/plain",
			Body:        []byte(body),
		})
	failOnError(err, "Failed to publish a message")
	log.Printf(" [x] Sent %s: %s", key, body)
}

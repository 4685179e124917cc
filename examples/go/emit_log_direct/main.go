// emit_log_direct publishes one log message with a severity on the direct exchange
// "logs_direct".
//
// Routing, the producer half. The severity is the routing key; only receive_logs_direct
// processes bound with exactly that key get the message.
//
//	go run ./emit_log_direct error "Run. Run. Or it will explode."
//	go run ./emit_log_direct [SEVERITY [MESSAGE...]]   (default: info hello)
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

	// A direct exchange delivers a message to the queues bound with a binding key equal
	// to the message's routing key.
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

	severity, body := "info", "hello"
	if len(os.Args) > 1 && os.Args[1] != "" {
		severity = os.Args[1]
	}
	if len(os.Args) > 2 {
		body = strings.Join(os.Args[2:], " ")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	err = ch.PublishWithContext(ctx,
		"logs_direct", // exchange
		severity,      // routing key
		false,         // mandatory
		false,         // immediate
		amqp.Publishing{
			ContentType: "text/plain",
			Body:        []byte(body),
		})
	failOnError(err, "Failed to publish a message")
	log.Printf(" [x] Sent %s: %s", severity, body)
}

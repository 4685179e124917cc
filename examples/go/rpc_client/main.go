// rpc_client asks rpc_server for fib(n) and prints the answer.
//
// RPC, the client half:
//
//	go run ./rpc_client 30
//
// The client declares a server-named exclusive queue for the replies, sends the request
// to "rpc_queue" with reply_to naming that queue and a random correlation_id, and waits
// (30 seconds at most) for the reply that carries the same correlation_id.
//
// The broker's URL comes from AMQP_URL (default amqp://guest:guest@localhost:5672/).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log"
	"os"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const defaultURL = "amqp://guest:guest@localhost:5672/"

// How long the client waits for its reply.
const replyTimeout = 30 * time.Second

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
	n := 30
	if len(os.Args) > 1 {
		var err error
		n, err = strconv.Atoi(os.Args[1])
		failOnError(err, "The argument must be a number")
	}

	log.Printf(" [x] Requesting fib(%d)", n)
	res, err := fibonacciRPC(n)
	failOnError(err, "The request failed")
	log.Printf(" [.] Got %d", res)
}

func fibonacciRPC(n int) (int, error) {
	conn, err := amqp.Dial(brokerURL())
	failOnError(err, "Failed to connect to the broker")
	defer conn.Close()

	ch, err := conn.Channel()
	failOnError(err, "Failed to open a channel")
	defer ch.Close()

	// The reply queue: named by the broker, this connection's own, gone when it closes.
	q, err := ch.QueueDeclare(
		"",    // name
		false, // durable
		false, // delete when unused
		true,  // exclusive
		false, // no-wait
		nil,   // arguments
	)
	failOnError(err, "Failed to declare the reply queue")

	// Consume before publishing, so the reply cannot arrive before anyone listens.
	replies, err := ch.Consume(
		q.Name, // queue
		"",     // consumer tag, chosen by the broker
		true,   // auto-ack
		false,  // exclusive
		false,  // no-local
		false,  // no-wait
		nil,    // arguments
	)
	failOnError(err, "Failed to register a consumer")

	correlationID := randomID()

	ctx, cancel := context.WithTimeout(context.Background(), replyTimeout)
	defer cancel()

	err = ch.PublishWithContext(ctx,
		"",          // exchange
		"rpc_queue", // routing key
		false,       // mandatory
		false,       // immediate
		amqp.Publishing{
			ContentType:   "text/plain",
			CorrelationId: correlationID,
			ReplyTo:       q.Name,
			Body:          []byte(strconv.Itoa(n)),
		})
	failOnError(err, "Failed to publish the request")

	for {
		select {
		case d, ok := <-replies:
			if !ok {
				log.Fatal("The channel or the connection was closed")
			}
			// The queue is this client's own, but a server may still answer a request twice;
			// the correlation id tells this request's reply from any other.
			if d.CorrelationId == correlationID {
				return strconv.Atoi(string(d.Body))
			}
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// randomID returns 16 random bytes in hex, unique enough to match a reply to its request.
func randomID() string {
	b := make([]byte, 16)
	_, err := rand.Read(b)
	failOnError(err, "Failed to read random bytes")
	return hex.EncodeToString(b)
}

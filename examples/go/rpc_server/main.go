// rpc_server answers Fibonacci requests arriving on the queue "rpc_queue", until
// interrupted.
//
// RPC, the server half: start it, then run rpc_client. Each request's body is a number n;
// the reply, fib(n), goes to the queue named by the request's reply_to, with the request's
// correlation_id so that the client can match it to its request.
//
//	go run ./rpc_server
//
// Several servers may share the queue: with a prefetch of 1, each takes one request at a
// time, and a request is acknowledged only once its reply is published.
//
// The broker's URL comes from AMQP_URL (default amqp://guest:guest@localhost:5672/).
package main

import (
	"context"
	"log"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const defaultURL = "amqp://guest:guest@localhost:5672/"

// The largest n served: fib is computed the slow, recursive way, as a stand-in for real
// work, and fib(40) already takes about a second.
const nMax = 40

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

func fib(n int) int {
	if n < 2 {
		return n
	}
	return fib(n-1) + fib(n-2)
}

func main() {
	conn, err := amqp.Dial(brokerURL())
	failOnError(err, "Failed to connect to the broker")
	defer conn.Close()

	ch, err := conn.Channel()
	failOnError(err, "Failed to open a channel")
	defer ch.Close()

	q, err := ch.QueueDeclare(
		"rpc_queue", // name
		false,       // durable
		false,       // delete when unused
		false,       // exclusive
		false,       // no-wait
		nil,         // arguments
	)
	failOnError(err, "Failed to declare a queue")

	err = ch.Qos(
		1,     // prefetch count
		0,     // prefetch size (no limit)
		false, // global: per consumer, not per channel
	)
	failOnError(err, "Failed to set the prefetch")

	msgs, err := ch.Consume(
		q.Name, // queue
		"",     // consumer tag, chosen by the broker
		false,  // auto-ack: no, a request is acknowledged once answered
		false,  // exclusive
		false,  // no-local
		false,  // no-wait
		nil,    // arguments
	)
	failOnError(err, "Failed to register a consumer")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)

	log.Printf(" [*] Awaiting RPC requests")
	for {
		select {
		case d, ok := <-msgs:
			if !ok {
				log.Fatal("The channel or the connection was closed")
			}
			answer(ch, d)
		case <-stop:
			return
		}
	}
}

// answer publishes the reply to one request and acknowledges it. A request that is not a
// number from 0 to nMax is rejected without a reply (and, without requeueing, dropped).
func answer(ch *amqp.Channel, d amqp.Delivery) {
	n, err := strconv.Atoi(string(d.Body))
	if err != nil || n < 0 || n > nMax {
		log.Printf(" [!] Not a number from 0 to %d: %q", nMax, d.Body)
		failOnError(d.Reject(false), "Failed to reject a request")
		return
	}
	log.Printf(" [.] fib(%d)", n)
	response := fib(n)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = ch.PublishWithContext(ctx,
		"",        // exchange: the default one routes to the queue named by the key
		d.ReplyTo, // routing key
		false,     // mandatory
		false,     // immediate
		amqp.Publishing{
			ContentType:   "text/plain",
			CorrelationId: d.CorrelationId,
			Body:          []byte(strconv.Itoa(response)),
		})
	failOnError(err, "Failed to publish a reply")
	failOnError(d.Ack(false), "Failed to acknowledge a request")
}

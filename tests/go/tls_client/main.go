// tls_client: one round trip (declare, publish, get) over amqps with amqp091-go's DialTLS,
// verifying the server's certificate against TLS_CA. With TLS_CLIENT_CERT and
// TLS_CLIENT_KEY it presents a client certificate; with SASL=EXTERNAL it logs in with
// DialTLS_ExternalAuth (the user name comes from the certificate). Prints "round trip ok"
// on success; otherwise the error, and exits 1. Used by tests/tls.rs.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func fail(what string, err error) {
	fmt.Printf("%s: %v\n", what, err)
	os.Exit(1)
}

func main() {
	pem, err := os.ReadFile(os.Getenv("TLS_CA"))
	if err != nil {
		fail("read TLS_CA", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	config := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if cert := os.Getenv("TLS_CLIENT_CERT"); cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, os.Getenv("TLS_CLIENT_KEY"))
		if err != nil {
			fail("load client certificate", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	url := os.Getenv("AMQP_URL")
	var conn *amqp.Connection
	if os.Getenv("SASL") == "EXTERNAL" {
		conn, err = amqp.DialTLS_ExternalAuth(url, config)
	} else {
		conn, err = amqp.DialTLS(url, config)
	}
	if err != nil {
		fail("dial", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		fail("channel", err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		fail("queue.declare", err)
	}
	body := []byte("hello over TLS")
	if err := ch.Publish("", q.Name, false, false, amqp.Publishing{Body: body}); err != nil {
		fail("publish", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		msg, ok, err := ch.Get(q.Name, true)
		if err != nil {
			fail("basic.get", err)
		}
		if ok {
			if string(msg.Body) != string(body) {
				fail("basic.get", fmt.Errorf("got %q", msg.Body))
			}
			fmt.Println("round trip ok")
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	fail("basic.get", fmt.Errorf("no message within 10 s"))
}

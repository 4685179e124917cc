"""One round trip (declare, publish, get) over amqps with pika and an ssl context that
verifies the server's certificate against TLS_CA. With TLS_CLIENT_CERT and TLS_CLIENT_KEY
it presents a client certificate; with SASL=EXTERNAL it logs in with pika's
ExternalCredentials. With HOLD=1 it prints "connected" once its connection is open and
waits for a line on its standard input before the round trip. Prints "round trip ok", or
the error and exits 1. Used by
tests/tls.rs with Debian's python3-pika."""

import os
import ssl
import sys
import time

import pika


def main():
    context = ssl.create_default_context(cafile=os.environ["TLS_CA"])
    context.check_hostname = True
    if os.environ.get("TLS_CLIENT_CERT"):
        context.load_cert_chain(os.environ["TLS_CLIENT_CERT"], os.environ["TLS_CLIENT_KEY"])
    if os.environ.get("SASL") == "EXTERNAL":
        credentials = pika.credentials.ExternalCredentials()
    else:
        credentials = pika.PlainCredentials(os.environ["AMQP_USER"], os.environ["AMQP_PASS"])
    params = pika.ConnectionParameters(
        host="localhost",
        port=int(os.environ["AMQP_PORT"]),
        credentials=credentials,
        ssl_options=pika.SSLOptions(context, "localhost"),
        connection_attempts=1,
        socket_timeout=10,
        blocked_connection_timeout=10,
    )
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    if os.environ.get("HOLD") == "1":
        print("connected", flush=True)
        sys.stdin.readline()
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.basic_publish(exchange="", routing_key=queue, body=b"hello over TLS")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            if body != b"hello over TLS":
                raise RuntimeError("got %r" % body)
            print("round trip ok")
            connection.close()
            return
        time.sleep(0.01)
    raise RuntimeError("no message within 10 s")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the test reads the line
        print("%s: %s" % (type(e).__name__, e))
        sys.exit(1)

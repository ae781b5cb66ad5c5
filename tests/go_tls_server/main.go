// A TLS 1.3 test server on Go's crypto/tls, for the e2e tests (tests/tests/interop_go.rs).
//
// Go's server checks that the second ClientHello after its HelloRetryRequest changes nothing
// else than RFC 8446 §4.1.2 allows ("tls: client illegally modified second ClientHello").
// Listens on 127.0.0.1 (a free port), prints "READY <port>", serves -naccept connections one
// after the other: the handshake, one HTTP/1.0 request, a text/plain answer with what the
// server saw ("key=value" lines, also printed as "conn <n>: key=value", then "conn <n>: END";
// a failure prints "conn <n>: ERROR <what>").
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	certFile := flag.String("cert", "", "PEM certificate chain")
	keyFile := flag.String("key", "", "PEM private key")
	naccept := flag.Int("naccept", 1, "connections to serve")
	curves := flag.String("curves", "X25519,P256,P384", "groups accepted, in preference order")
	flag.Parse()

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	names := map[string]tls.CurveID{"X25519": tls.X25519, "P256": tls.CurveP256, "P384": tls.CurveP384}
	var prefs []tls.CurveID
	for _, c := range strings.Split(*curves, ",") {
		prefs = append(prefs, names[c])
	}
	cfg := &tls.Config{
		Certificates:     []tls.Certificate{cert},
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: prefs,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Printf("READY %d\n", ln.Addr().(*net.TCPAddr).Port)
	for n := 0; n < *naccept; n++ {
		raw, err := ln.Accept()
		if err != nil {
			fmt.Printf("conn %d: ERROR %v\n", n, err)
			continue
		}
		serve(n, tls.Server(raw, cfg))
	}
}

func serve(n int, c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.Handshake(); err != nil {
		fmt.Printf("conn %d: ERROR %v\n", n, err)
		return
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Printf("conn %d: ERROR %v\n", n, err)
		return
	}
	st := c.ConnectionState()
	body := fmt.Sprintf("version=%x\ncipher=%s\nresumed=%v\nrequest=%s\n",
		st.Version, tls.CipherSuiteName(st.CipherSuite), st.DidResume, strings.TrimSpace(line))
	fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	for _, l := range strings.Split(strings.TrimSpace(body), "\n") {
		fmt.Printf("conn %d: %s\n", n, l)
	}
	fmt.Printf("conn %d: END\n", n)
}

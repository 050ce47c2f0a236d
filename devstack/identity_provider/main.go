// Command phasegate-idp is the OpenID Connect provider of Phasegate's local stack and tests:
// zitadel's example OP (login form, authorization code with PKCE, refresh tokens, device
// authorization, RS256 ID tokens, JWKS) with people and clients read from JSON files, on
// 127.0.0.1 only. Machine clients get RS256 JWT access tokens with a `permissions` claim by
// the client credentials grant.
//
//	phasegate-idp -port 9998 -users people.json -clients clients.json [-issuer URL]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
)

// ReadyLine is logged once the provider accepts connections.
const ReadyLine = "phasegate-idp: serving"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "phasegate-idp:", err)
		os.Exit(1)
	}
}

func run() error {
	port := flag.Int("port", envInt("PHASEGATE_IDP_PORT", 0), "loopback port to listen on (env PHASEGATE_IDP_PORT)")
	issuer := flag.String("issuer", os.Getenv("PHASEGATE_IDP_ISSUER"), "issuer URL (env PHASEGATE_IDP_ISSUER; default http://127.0.0.1:PORT)")
	usersFile := flag.String("users", os.Getenv("PHASEGATE_IDP_USERS"), "JSON list of people (env PHASEGATE_IDP_USERS)")
	clientsFile := flag.String("clients", os.Getenv("PHASEGATE_IDP_CLIENTS"), "JSON list of clients (env PHASEGATE_IDP_CLIENTS)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if *port <= 0 || *port > 65535 {
		return errors.New("-port: give the loopback port to listen on (1-65535)")
	}
	if *usersFile == "" || *clientsFile == "" {
		return errors.New("-users and -clients: give the people file and the clients file")
	}
	if *issuer == "" {
		*issuer = fmt.Sprintf("http://127.0.0.1:%d", *port)
	}
	// The provider serves at the root of its listener, so the issuer can have no path.
	if parsed, err := url.Parse(*issuer); err != nil || parsed.Host == "" || (parsed.Path != "" && parsed.Path != "/") ||
		(parsed.Scheme != "http" && parsed.Scheme != "https") {
		return fmt.Errorf("-issuer: %q is not an http(s) URL without a path", *issuer)
	}

	persons, err := LoadPeople(*usersFile)
	if err != nil {
		return err
	}
	clients, err := LoadClients(*clientsFile)
	if err != nil {
		return err
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	router := exampleop.SetupServer(*issuer, NewStorage(persons, clients), logger, false)

	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(*port)))
	if err != nil {
		return err
	}
	server := &http.Server{Handler: router, ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	logger.Info(ReadyLine, "issuer", *issuer, "people", len(persons), "clients", len(clients))

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return server.Shutdown(shutdown)
}

func envInt(name string, fallback int) int {
	value, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		return fallback
	}
	return value
}

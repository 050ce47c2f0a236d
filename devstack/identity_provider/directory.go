package main

// The people who can sign in and the clients they sign in to, read from JSON files. Every
// field is checked on load, so a bad file stops the provider with one line naming the field.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// Person is one entry of the people file.
type Person struct {
	Username string   `json:"username"`
	Password string   `json:"password"`
	Name     string   `json:"name"`
	Email    string   `json:"email"`
	Groups   []string `json:"groups"`
}

// ClientSpec is one entry of the clients file; the field names are those of OAuth dynamic
// client registration (RFC 7591), plus redirect_uri_globs: patterns (doublestar syntax, e.g.
// "http://127.0.0.1:*/callback") for a web client whose port is chosen when it starts.
//
// A machine client is a web client whose only grant is client_credentials: it signs in no
// person, and its access tokens are JWTs for `audience` (default: its client_id) carrying
// `permissions` (e.g. Temporal's "default:write"), valid for token_lifetime_s seconds.
type ClientSpec struct {
	ClientID                string   `json:"client_id"`
	ClientSecret            string   `json:"client_secret"`
	ApplicationType         string   `json:"application_type"`
	RedirectURIs            []string `json:"redirect_uris"`
	RedirectURIGlobs        []string `json:"redirect_uri_globs"`
	GrantTypes              []string `json:"grant_types"`
	TokenEndpointAuthMethod string   `json:"token_endpoint_auth_method"`
	Permissions             []string `json:"permissions"`
	Audience                []string `json:"audience"`
	TokenLifetimeS          int      `json:"token_lifetime_s"`
}

var knownGrantTypes = []oidc.GrantType{
	oidc.GrantTypeCode,
	oidc.GrantTypeRefreshToken,
	oidc.GrantTypeDeviceCode,
	oidc.GrantTypeClientCredentials,
}

const (
	defaultMachineTokenLifetime = time.Hour
	maxMachineTokenLifetime     = 24 * time.Hour
)

// readJSONList decodes the JSON array in path into a slice of T, refusing unknown fields.
func readJSONList[T any](path string) ([]T, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.DisallowUnknownFields()
	var items []T
	if err := decoder.Decode(&items); err != nil {
		return nil, fmt.Errorf("%s: not a JSON list of the expected objects: %w", path, err)
	}
	if _, err := decoder.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: unexpected data after the JSON list", path)
	}
	return items, nil
}

// LoadPeople reads and checks the people file: every field set, usernames unique.
func LoadPeople(path string) (map[string]Person, error) {
	people, err := readJSONList[Person](path)
	if err != nil {
		return nil, err
	}
	byUsername := make(map[string]Person, len(people))
	for i, person := range people {
		where := fmt.Sprintf("%s: person %d", path, i+1)
		for _, field := range []struct{ name, value string }{
			{"username", person.Username}, {"password", person.Password},
			{"name", person.Name}, {"email", person.Email},
		} {
			if field.value == "" {
				return nil, fmt.Errorf("%s: field %q is missing or empty", where, field.name)
			}
		}
		if _, taken := byUsername[person.Username]; taken {
			return nil, fmt.Errorf("%s: username %q appears twice", where, person.Username)
		}
		if person.Groups == nil {
			return nil, fmt.Errorf("%s (%s): field \"groups\" is missing (give [] for none)", where, person.Username)
		}
		if slices.Contains(person.Groups, "") {
			return nil, fmt.Errorf("%s (%s): field \"groups\" holds an empty group name", where, person.Username)
		}
		byUsername[person.Username] = person
	}
	if len(byUsername) == 0 {
		return nil, fmt.Errorf("%s: no people", path)
	}
	return byUsername, nil
}

// LoadClients reads and checks the clients file and turns each entry into a Client.
func LoadClients(path string) (map[string]*Client, error) {
	specs, err := readJSONList[ClientSpec](path)
	if err != nil {
		return nil, err
	}
	clients := make(map[string]*Client, len(specs))
	for i, spec := range specs {
		where := fmt.Sprintf("%s: client %d", path, i+1)
		if spec.ClientID != "" {
			where += fmt.Sprintf(" (%s)", spec.ClientID)
		}
		client, err := newClient(spec)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if _, taken := clients[client.id]; taken {
			return nil, fmt.Errorf("%s: client_id appears twice", where)
		}
		clients[client.id] = client
	}
	if len(clients) == 0 {
		return nil, fmt.Errorf("%s: no clients", path)
	}
	// A machine token whose audience named a client people sign in to would pass, there, for
	// that client's ID token.
	for i, spec := range specs {
		for _, audience := range spec.Audience {
			if other, ok := clients[audience]; ok && !other.machine {
				return nil, fmt.Errorf(`%s: client %d (%s): field "audience": %q is a client people sign in to; a machine token must not be made for it`,
					path, i+1, spec.ClientID, audience)
			}
		}
	}
	return clients, nil
}

func newClient(spec ClientSpec) (*Client, error) {
	if spec.ClientID == "" {
		return nil, errors.New(`field "client_id" is missing or empty`)
	}
	client := &Client{
		id:               spec.ClientID,
		secret:           spec.ClientSecret,
		redirectURIs:     spec.RedirectURIs,
		redirectURIGlobs: spec.RedirectURIGlobs,
	}
	switch spec.ApplicationType {
	case "native":
		client.applicationType = op.ApplicationTypeNative
		if spec.ClientSecret != "" {
			return nil, errors.New(`field "client_secret": a native client is public and has none`)
		}
		client.authMethod = oidc.AuthMethodNone
		if spec.TokenEndpointAuthMethod != "" && spec.TokenEndpointAuthMethod != string(oidc.AuthMethodNone) {
			return nil, errors.New(`field "token_endpoint_auth_method": a native client uses "none"`)
		}
	case "web":
		client.applicationType = op.ApplicationTypeWeb
		if spec.ClientSecret == "" {
			return nil, errors.New(`field "client_secret" is missing or empty (a web client is confidential)`)
		}
		switch spec.TokenEndpointAuthMethod {
		case "", string(oidc.AuthMethodBasic):
			client.authMethod = oidc.AuthMethodBasic
		case string(oidc.AuthMethodPost):
			client.authMethod = oidc.AuthMethodPost
		default:
			return nil, fmt.Errorf(`field "token_endpoint_auth_method": %q is not one of "client_secret_basic", "client_secret_post"`, spec.TokenEndpointAuthMethod)
		}
	default:
		return nil, fmt.Errorf(`field "application_type": %q is not one of "native", "web"`, spec.ApplicationType)
	}
	if len(spec.GrantTypes) == 0 {
		return nil, errors.New(`field "grant_types" is missing or empty`)
	}
	for _, grant := range spec.GrantTypes {
		if !slices.Contains(knownGrantTypes, oidc.GrantType(grant)) {
			return nil, fmt.Errorf(`field "grant_types": %q is not one of %q`, grant, knownGrantTypes)
		}
		client.grantTypes = append(client.grantTypes, oidc.GrantType(grant))
	}
	if err := setMachine(client, spec); err != nil {
		return nil, err
	}
	if slices.Contains(client.grantTypes, oidc.GrantTypeCode) {
		client.responseTypes = []oidc.ResponseType{oidc.ResponseTypeCode}
		if len(spec.RedirectURIs) == 0 && len(spec.RedirectURIGlobs) == 0 {
			return nil, errors.New(`field "redirect_uris" is missing or empty (the authorization_code grant needs one)`)
		}
	}
	for _, uri := range spec.RedirectURIs {
		parsed, err := url.Parse(uri)
		if err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
			return nil, fmt.Errorf(`field "redirect_uris": %q is not an absolute http(s) URL`, uri)
		}
		if _, loopback := op.HTTPLoopbackOrLocalhost(uri); client.applicationType == op.ApplicationTypeNative && !loopback {
			return nil, fmt.Errorf(`field "redirect_uris": %q is not a loopback URL, which a native client needs`, uri)
		}
	}
	for _, glob := range spec.RedirectURIGlobs {
		if client.applicationType == op.ApplicationTypeNative {
			return nil, errors.New(`field "redirect_uri_globs": a native client's loopback redirect_uris take any port already`)
		}
		if !doublestar.ValidatePattern(glob) || (!strings.HasPrefix(glob, "http://") && !strings.HasPrefix(glob, "https://")) {
			return nil, fmt.Errorf(`field "redirect_uri_globs": %q is not a pattern of http(s) URLs`, glob)
		}
	}
	return client, nil
}

// setMachine makes `client` a machine client when its only grant is client_credentials, and
// refuses the machine-only fields on any other client.
func setMachine(client *Client, spec ClientSpec) error {
	if !slices.Contains(client.grantTypes, oidc.GrantTypeClientCredentials) {
		if spec.Permissions != nil || spec.Audience != nil || spec.TokenLifetimeS != 0 {
			return errors.New(`fields "permissions", "audience" and "token_lifetime_s" are for machine clients (grant_types ["client_credentials"]) only`)
		}
		return nil
	}
	if len(client.grantTypes) != 1 {
		return errors.New(`field "grant_types": "client_credentials" signs in no person, so a machine client has no other grant`)
	}
	if client.applicationType != op.ApplicationTypeWeb {
		return errors.New(`field "application_type": a machine client is confidential ("web")`)
	}
	if len(spec.RedirectURIs) > 0 || len(spec.RedirectURIGlobs) > 0 {
		return errors.New(`field "redirect_uris": a machine client is redirected nowhere`)
	}
	if spec.Permissions == nil {
		return errors.New(`field "permissions" is missing (give [] for none)`)
	}
	if slices.Contains(spec.Permissions, "") {
		return errors.New(`field "permissions" holds an empty permission`)
	}
	if slices.Contains(spec.Audience, "") {
		return errors.New(`field "audience" holds an empty audience`)
	}
	lifetime := time.Duration(spec.TokenLifetimeS) * time.Second
	switch {
	case spec.TokenLifetimeS == 0:
		lifetime = defaultMachineTokenLifetime
	case spec.TokenLifetimeS < 0 || lifetime > maxMachineTokenLifetime:
		return fmt.Errorf(`field "token_lifetime_s": %d is not between 1 and %d seconds`, spec.TokenLifetimeS, int(maxMachineTokenLifetime.Seconds()))
	}
	client.machine = true
	client.permissions = slices.Clone(spec.Permissions)
	client.audience = slices.Clone(spec.Audience)
	if len(client.audience) == 0 {
		client.audience = []string{client.id}
	}
	client.tokenLifetime = lifetime
	return nil
}

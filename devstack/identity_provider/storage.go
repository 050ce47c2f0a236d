package main

// Phasegate's provider storage: zitadel's example storage (auth requests, codes, tokens,
// refresh tokens, device codes, the RS256 signing key) with Phasegate's people and clients
// and the claims the approval service reads: name, email, preferred_username and groups.
// Machine clients get JWT access tokens by the client credentials grant, with the
// `permissions` claim Temporal's default JWT claim mapper reads.

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

const (
	// GroupsScope asks for the groups claim, in the ID token and from userinfo.
	GroupsScope = "groups"
	// GroupsClaim lists the groups a person belongs to.
	GroupsClaim = "groups"
	// PermissionsClaim lists a machine client's permissions in its access tokens.
	PermissionsClaim = "permissions"
)

// The login form the provider sends a browser to; exampleop serves it.
func loginURL(authRequestID string) string {
	return "/login/username?authRequestID=" + authRequestID
}

// Client is a client from the clients file.
type Client struct {
	id              string
	secret          string
	applicationType op.ApplicationType
	authMethod      oidc.AuthMethod
	redirectURIs    []string
	// Checked by the library after redirectURIs, for web clients.
	redirectURIGlobs []string
	responseTypes    []oidc.ResponseType
	grantTypes       []oidc.GrantType

	// A machine client signs in no person: client credentials only, JWT access tokens.
	machine       bool
	permissions   []string
	audience      []string
	tokenLifetime time.Duration
}

var _ op.HasRedirectGlobs = (*Client)(nil)

func (c *Client) GetID() string                        { return c.id }
func (c *Client) RedirectURIs() []string               { return c.redirectURIs }
func (c *Client) PostLogoutRedirectURIs() []string     { return nil }
func (c *Client) RedirectURIGlobs() []string           { return c.redirectURIGlobs }
func (c *Client) PostLogoutRedirectURIGlobs() []string { return nil }
func (c *Client) ApplicationType() op.ApplicationType  { return c.applicationType }
func (c *Client) AuthMethod() oidc.AuthMethod          { return c.authMethod }
func (c *Client) ResponseTypes() []oidc.ResponseType   { return c.responseTypes }
func (c *Client) GrantTypes() []oidc.GrantType         { return c.grantTypes }
func (c *Client) LoginURL(id string) string            { return loginURL(id) }
func (c *Client) IDTokenLifetime() time.Duration       { return time.Hour }
func (c *Client) DevMode() bool                        { return false }
func (c *Client) ClockSkew() time.Duration             { return 0 }
func (c *Client) IsScopeAllowed(scope string) bool     { return scope == GroupsScope }

// AccessTokenType is JWT for a machine client, which presents its token to servers that check
// it against the published keys; opaque for the clients people sign in to.
func (c *Client) AccessTokenType() op.AccessTokenType {
	if c.machine {
		return op.AccessTokenTypeJWT
	}
	return op.AccessTokenTypeBearer
}

// IDTokenUserinfoClaimsAssertion puts the profile and email claims into the ID token even
// though an access token is issued too: the approval service reads them from the ID token.
func (c *Client) IDTokenUserinfoClaimsAssertion() bool { return true }

func (c *Client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(scopes []string) []string { return scopes }
}

func (c *Client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(scopes []string) []string { return scopes }
}

// people adapts the people file to the example storage's UserStore; a person's subject is
// their username (the example's device login records the username as the subject).
type people map[string]Person

func (p people) GetUserByID(id string) *storage.User { return p.GetUserByUsername(id) }

func (p people) GetUserByUsername(username string) *storage.User {
	person, ok := p[username]
	if !ok {
		return nil
	}
	return &storage.User{
		ID:            person.Username,
		Username:      person.Username,
		Password:      person.Password,
		FirstName:     person.Name,
		Email:         person.Email,
		EmailVerified: true,
	}
}

// ExampleClientID names the example's JWT-profile service user; Storage refuses its keys.
func (p people) ExampleClientID() string { return "" }

// Storage is the example storage with Phasegate's people, clients and claims.
type Storage struct {
	*storage.Storage
	people  people
	clients map[string]*Client

	lock sync.Mutex
	// The scopes each access token was issued for: userinfo answers by them.
	tokenScopes map[string][]string
}

func NewStorage(persons map[string]Person, clients map[string]*Client) *Storage {
	// The example storage checks device authorizations against its own client list.
	known := make(map[string]*storage.Client, len(clients))
	for id := range clients {
		known[id] = storage.DeviceClient(id, "")
	}
	return &Storage{
		Storage:     storage.NewStorageWithClients(people(persons), known),
		people:      people(persons),
		clients:     clients,
		tokenScopes: make(map[string][]string),
	}
}

func (s *Storage) GetClientByClientID(_ context.Context, clientID string) (op.Client, error) {
	client, ok := s.clients[clientID]
	if !ok {
		return nil, fmt.Errorf("client %q not found", clientID)
	}
	return client, nil
}

func (s *Storage) AuthorizeClientIDSecret(_ context.Context, clientID, clientSecret string) error {
	client, ok := s.clients[clientID]
	if !ok || client.secret == "" ||
		subtle.ConstantTimeCompare([]byte(client.secret), []byte(clientSecret)) != 1 {
		return errors.New("invalid client_id or client_secret")
	}
	return nil
}

// CreateAuthRequest refuses an authorization request without PKCE, from any client.
func (s *Storage) CreateAuthRequest(ctx context.Context, request *oidc.AuthRequest, userID string) (op.AuthRequest, error) {
	if request.CodeChallenge == "" {
		return nil, oidc.ErrInvalidRequest().WithDescription("code_challenge is required: this provider takes the authorization code flow with PKCE only")
	}
	return s.Storage.CreateAuthRequest(ctx, request, userID)
}

func (s *Storage) CreateAccessToken(ctx context.Context, request op.TokenRequest) (string, time.Time, error) {
	if machine, ok := request.(*machineTokenRequest); ok {
		// Self-contained: nothing to look up later, as userinfo and introspection are for people.
		id := make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return "", time.Time{}, err
		}
		return hex.EncodeToString(id), time.Now().Add(machine.client.tokenLifetime), nil
	}
	if device, ok := request.(*op.DeviceAuthorizationState); ok {
		// The example storage learns the client of a token from an auth request only.
		request = &storage.AuthRequest{ApplicationID: device.ClientID, UserID: device.Subject, Scopes: device.Scopes}
	}
	tokenID, expiration, err := s.Storage.CreateAccessToken(ctx, request)
	if err == nil {
		s.recordScopes(tokenID, request.GetScopes())
	}
	return tokenID, expiration, err
}

func (s *Storage) CreateAccessAndRefreshTokens(ctx context.Context, request op.TokenRequest, currentRefreshToken string) (string, string, time.Time, error) {
	if device, ok := request.(*op.DeviceAuthorizationState); ok {
		// As a refresh token request, so the refresh token keeps the client, time and methods.
		request = storage.RefreshTokenRequestFromBusiness(&storage.RefreshToken{
			ApplicationID: device.ClientID,
			UserID:        device.Subject,
			Audience:      device.GetAudience(),
			Scopes:        device.Scopes,
			AuthTime:      device.AuthTime,
			AMR:           device.AMR,
		})
	}
	tokenID, refreshToken, expiration, err := s.Storage.CreateAccessAndRefreshTokens(ctx, request, currentRefreshToken)
	if err == nil {
		s.recordScopes(tokenID, request.GetScopes())
	}
	return tokenID, refreshToken, expiration, err
}

func (s *Storage) recordScopes(tokenID string, scopes []string) {
	s.lock.Lock()
	defer s.lock.Unlock()
	s.tokenScopes[tokenID] = slices.Clone(scopes)
}

// CompleteDeviceAuthorization approves a user code that has not expired, recording when and
// how the person signed in.
func (s *Storage) CompleteDeviceAuthorization(ctx context.Context, userCode, subject string) error {
	state, err := s.Storage.GetDeviceAuthorizationByUserCode(ctx, userCode)
	if err != nil {
		return err
	}
	if time.Now().After(state.Expires) {
		return errors.New("the code has expired: start signing in on the device again")
	}
	state.AuthTime = time.Now()
	state.AMR = []string{"pwd"}
	return s.Storage.CompleteDeviceAuthorization(ctx, userCode, subject)
}

// SetUserinfoFromRequest fills the ID token's claims.
func (s *Storage) SetUserinfoFromRequest(_ context.Context, userinfo *oidc.UserInfo, request op.IDTokenRequest, scopes []string) error {
	return s.fillUserinfo(userinfo, request.GetSubject(), scopes)
}

// SetUserinfoFromToken answers the userinfo endpoint for a valid access token.
func (s *Storage) SetUserinfoFromToken(ctx context.Context, userinfo *oidc.UserInfo, tokenID, subject, origin string) error {
	if err := s.Storage.SetUserinfoFromToken(ctx, userinfo, tokenID, subject, origin); err != nil {
		return err
	}
	*userinfo = oidc.UserInfo{}
	return s.fillUserinfo(userinfo, subject, s.scopesOf(tokenID))
}

// SetIntrospectionFromToken answers token introspection for a valid access token.
func (s *Storage) SetIntrospectionFromToken(ctx context.Context, introspection *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	if err := s.Storage.SetIntrospectionFromToken(ctx, introspection, tokenID, subject, clientID); err != nil {
		return err
	}
	userinfo := new(oidc.UserInfo)
	if err := s.fillUserinfo(userinfo, subject, s.scopesOf(tokenID)); err != nil {
		return err
	}
	introspection.Claims = nil
	introspection.SetUserInfo(userinfo)
	return nil
}

func (s *Storage) scopesOf(tokenID string) []string {
	s.lock.Lock()
	defer s.lock.Unlock()
	return s.tokenScopes[tokenID]
}

// fillUserinfo sets the claims of `subject` that `scopes` ask for: profile gives name and
// preferred_username, email gives email, groups gives groups.
func (s *Storage) fillUserinfo(userinfo *oidc.UserInfo, subject string, scopes []string) error {
	person, ok := s.people[subject]
	if !ok {
		return fmt.Errorf("no person with subject %q", subject)
	}
	userinfo.Subject = person.Username
	for _, scope := range scopes {
		switch scope {
		case oidc.ScopeProfile:
			userinfo.Name = person.Name
			userinfo.PreferredUsername = person.Username
		case oidc.ScopeEmail:
			userinfo.Email = person.Email
			userinfo.EmailVerified = true
		case GroupsScope:
			userinfo.AppendClaims(GroupsClaim, append([]string{}, person.Groups...))
		}
	}
	return nil
}

// GetKeyByIDAndClientID refuses every key: the JWT-profile grant and private_key_jwt client
// authentication, which the example storage offers with a published key, are not offered.
func (s *Storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("no client keys are registered")
}

// ClientCredentials authenticates a confidential client by its secret. Only machine clients
// have the client_credentials grant, so the library refuses any other as unauthorized_client:
// a token from that grant signs in no person.
func (s *Storage) ClientCredentials(ctx context.Context, clientID, clientSecret string) (op.Client, error) {
	if err := s.AuthorizeClientIDSecret(ctx, clientID, clientSecret); err != nil {
		return nil, err
	}
	return s.clients[clientID], nil
}

// ClientCredentialsTokenRequest is the token a machine client asks for: its own subject and
// audience; scopes are not given, permissions come from the clients file.
func (s *Storage) ClientCredentialsTokenRequest(_ context.Context, clientID string, _ []string) (op.TokenRequest, error) {
	client, ok := s.clients[clientID]
	if !ok || !client.machine {
		return nil, oidc.ErrUnauthorizedClient().WithDescription("client %q is not a machine client", clientID)
	}
	return &machineTokenRequest{client: client}, nil
}

// GetPrivateClaimsFromScopes adds a machine client's permissions to its JWT access tokens.
func (s *Storage) GetPrivateClaimsFromScopes(ctx context.Context, userID, clientID string, scopes []string) (map[string]any, error) {
	if client, ok := s.clients[clientID]; ok && client.machine {
		return map[string]any{PermissionsClaim: slices.Clone(client.permissions)}, nil
	}
	return s.Storage.GetPrivateClaimsFromScopes(ctx, userID, clientID, scopes)
}

// machineTokenRequest is a machine client's client credentials request.
type machineTokenRequest struct {
	client *Client
}

func (r *machineTokenRequest) GetSubject() string    { return r.client.id }
func (r *machineTokenRequest) GetAudience() []string { return slices.Clone(r.client.audience) }
func (r *machineTokenRequest) GetScopes() []string   { return nil }

// A real OpenID Provider for the tests: oidc-provider with its own login and consent pages
// (any password; only the configured users exist), the device flow, token introspection and
// JWT access tokens for forgehub's API (resource indicators). Run by tests/oidc_provider.py:
//   node provider.mjs CONFIG.json
// CONFIG: {issuer, port, jwks: {keys: [private JWKs]}, clients: [...], users: {sub: claims},
//          audience, api_resource, access_token_ttl}
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients,
  jwks: cfg.jwks,
  async findAccount(_ctx, sub) {
    const claims = cfg.users[sub];
    if (!claims) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...claims }) };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups', 'eduperson_entitlement'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  conformIdTokenClaims: false, // the ID token carries the claims (groups) like most providers
  pkce: { required: () => true },
  ttl: {
    AccessToken: cfg.access_token_ttl ?? 600,
    AuthorizationCode: 60,
    DeviceCode: 600,
    Grant: 3600,
    IdToken: 600,
    Interaction: 600,
    RefreshToken: 3600,
    Session: 3600,
  },
  // groups and the user name in access tokens, as Keycloak does (introspection returns
  // them too); users marked bare_tokens get only `sub`, as some providers give
  async extraTokenClaims(_ctx, token) {
    const claims = cfg.users[token.accountId];
    if (!claims || claims.bare_tokens) return undefined;
    const extra = { groups: claims.groups ?? [], preferred_username: claims.preferred_username };
    if (claims.eduperson_entitlement) extra.eduperson_entitlement = claims.eduperson_entitlement;
    return extra;
  },
  issueRefreshToken: async (_ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // clients named in api_clients get JWT access tokens for forgehub's API by default
      defaultResource: async (_ctx, client, oneOf) =>
        oneOf ?? ((cfg.api_clients ?? []).includes(client.clientId) ? cfg.api_resource : undefined),
      useGrantedResource: async () => true,
      getResourceServerInfo: async () => ({
        scope: 'api',
        audience: cfg.audience,
        accessTokenFormat: 'jwt',
        accessTokenTTL: cfg.access_token_ttl ?? 600,
      }),
    },
  },
});
provider.proxy = false;
const server = provider.listen(cfg.port, '127.0.0.1', () => {
  process.stdout.write(`listening ${cfg.issuer}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}

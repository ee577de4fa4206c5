// An OpenID Connect provider for the single sign-on test: panva's
// oidc-provider (a certified implementation), with its development login
// form, one confidential client, and accounts whose claims name their Vigil
// role: `lee` is a lead, `ana` an analyst, `nobody` has no role.
//
//   node tests/browser/oidc-provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI
// Prints "listening" once it answers.
import Provider from "oidc-provider";

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
const roles = { lee: "lead", ana: "analyst" };
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ["authorization_code"],
    response_types: ["code"],
  }],
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        const claims = { sub: id, preferred_username: id };
        if (roles[id]) claims.vigil_role = roles[id];
        return claims;
      },
    };
  },
  claims: { openid: ["sub"], profile: ["preferred_username", "vigil_role"] },
  pkce: { required: () => true },
});
provider.listen(Number(port), "127.0.0.1", () => console.log("listening"));

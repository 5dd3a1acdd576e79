"""A real token service for registry tests: the Docker registry token protocol that
distribution's `auth: token:` trusts, with a per-user policy.

    python3 token_service.py DIR POLICY_JSON

DIR receives `key.pem` and `cert.pem` (a fresh P-256 key and its self-signed certificate:
the registry's `rootcertbundle`) and `requests.jsonl` (one line per token request: user,
requested and granted scopes; never a password). POLICY_JSON:

    {"issuer": "...", "service": "...",
     "users": {"NAME": {"password": "...", "grants": {"REPOSITORY|PATTERN": ["pull", "push"]}}}}

Patterns are fnmatch patterns (`base/*`). Listens on 127.0.0.1, on a free port, and prints
`ready PORT` once it serves.

GET /token?service=S&scope=repository:NAME:pull,push[&scope=...] with Basic credentials
answers a JWT (ES256) whose `access` claim holds, per requested repository, the requested
actions the user may do, and nothing else: a user asking for more than it may gets a token
for less (as the protocol says: the registry, not the token service, refuses the request
that needs more). Wrong credentials: 401. No credentials: a token granting nothing.
The header carries the certificate in `x5c`; distribution 2.8 verifies that chain against
its `rootcertbundle` (registry/auth/token/token.go, VerifySigningKey).
"""

import base64
import datetime
import fnmatch
import hmac
import http.server
import json
import os
import secrets
import sys
import time
import urllib.parse

try:
    import jwt
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError as e:  # said plainly: the test prints this
    sys.stderr.write(
        f"token_service.py needs PyJWT and cryptography ({e}); "
        "install them with: bash tests/support/testenv.sh deps "
        "(or python3 -m pip install PyJWT cryptography)\n"
    )
    sys.exit(3)

TOKEN_SECONDS = 300


def make_key(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "venvimg test token issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    with open(os.path.join(directory, "cert.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(directory, "key.pem"), "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return key, base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def parse_scope(text):
    """`repository:NAME:a,b` -> (type, NAME, [a, b]); names hold no `:` but may hold `/`."""
    kind, _, rest = text.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


def allowed(user, name):
    granted = set()
    for pattern, actions in user.get("grants", {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            granted.update(actions)
    return granted


def main():
    directory, policy = sys.argv[1], json.loads(sys.argv[2])
    key, cert_b64 = make_key(directory)
    log_path = os.path.join(directory, "requests.jsonl")
    open(log_path, "w").close()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, doc):
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/token":
                return self.reply(404, {"details": "not found"})
            query = urllib.parse.parse_qs(url.query)
            if query.get("service", [None])[0] != policy["service"]:
                return self.reply(400, {"details": "unknown service"})
            user_name = None
            header = self.headers.get("Authorization", "")
            if header[:6].lower() == "basic ":
                try:
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                except ValueError:
                    return self.reply(400, {"details": "malformed Basic credentials"})
                user = policy["users"].get(name)
                if user is None or not hmac.compare_digest(user["password"], password):
                    self.log(name, [], [], 401)
                    return self.reply(401, {"details": "wrong username or password"})
                user_name = name
            # Several scope parameters, each possibly several scopes separated by spaces
            # (distribution's challenge joins them so).
            requested = [s for value in query.get("scope", []) for s in value.split()]
            access = []
            for scope in requested:
                parsed = parse_scope(scope)
                if parsed is None or parsed[0] != "repository":
                    continue
                kind, name, actions = parsed
                mine = allowed(policy["users"][user_name], name) if user_name else set()
                granted = [a for a in actions if a in mine]
                if granted:
                    access.append({"type": kind, "name": name, "actions": granted})
            now = int(time.time())
            claims = {
                "iss": policy["issuer"],
                "sub": user_name or "",
                "aud": policy["service"],
                "exp": now + TOKEN_SECONDS,
                "nbf": now - 5,
                "iat": now,
                "jti": secrets.token_hex(8),
                "access": access,
            }
            token = jwt.encode(claims, key, algorithm="ES256", headers={"x5c": [cert_b64]})
            self.log(user_name, requested, access, 200)
            self.reply(
                200,
                {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS},
            )

        def log(self, user, requested, access, status):
            with open(log_path, "a") as f:
                f.write(
                    json.dumps(
                        {"user": user, "status": status, "scopes": requested, "access": access}
                    )
                    + "\n"
                )

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

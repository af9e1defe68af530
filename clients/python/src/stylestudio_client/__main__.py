"""The client package's commands (docs/clients.md):

python -m stylestudio_client generate-key --identity <name>
    a new key for a calling service: the private key stays with the service; the public key
    goes to the platform's operators, who list it under the identity in
    STYLESTUDIO_SERVICE_PUBLIC_KEYS.
python -m stylestudio_client token [--on-behalf-of <user id>]
    a credential of the identity in STYLESTUDIO_SERVICE_IDENTITY and ..._PRIVATE_KEY, for
    tools that take a header (grpcurl -H "authorization: Bearer $(...)"); valid five minutes.
"""

from __future__ import annotations

import argparse
import json
import sys

from stylestudio_client.identity import IDENTITY_VARIABLE, PRIVATE_KEY_VARIABLE, ServiceIdentity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylestudio_client")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate-key", help="a fresh Ed25519 key, as env lines")
    generate.add_argument("--identity", required=True, help="the identity's name, as the protos declare it")
    token = commands.add_parser("token", help="a credential of the identity in the environment")
    token.add_argument("--on-behalf-of", default="", metavar="USER_ID", help="acting for this user")
    args = parser.parse_args(argv)
    if args.command == "token":
        print(ServiceIdentity.from_env().token(args.on_behalf_of))
        return 0
    identity = ServiceIdentity.generate(args.identity)
    one_line = identity.private_pem().strip().replace("\n", "\\n")
    print(f"{IDENTITY_VARIABLE}={identity.name}")
    print(f"{PRIVATE_KEY_VARIABLE}={one_line}")
    entry = json.dumps({identity.name: [identity.public_pem()]})
    print(
        f"# for the platform's STYLESTUDIO_SERVICE_PUBLIC_KEYS (key id {identity.key_id}): {entry}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

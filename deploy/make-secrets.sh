#!/bin/sh
# Generate the secrets docker-compose.yml reads (deploy/secrets/*), once.
# Existing files are kept, so running it again changes nothing.
#
#   cluster_secret         authenticates the coordinator nodes to each other
#   bank_a_secret          bank-a's own secret: it signs its calls and answers with it, and
#                          the coordinator signs its requests to bank-a with it
#   bank_b_secret          the same for bank-b (neither bank can act for the other)
#   participants           the participant registry the nodes read (TXC_PARTICIPANTS_FILE):
#                          each bank's name, its secret and its URL
#   admin_token            API token with the admin role: the txc CLI, the dashboard's actions
#   client_token           API token with the client role: begin, commit, abort (applications)
#   participant_api_token  API token with the participant role: enlist, outcome (the banks)
#   read_token             API token with the read role: the dashboard's view
#   api_tokens             the three role tokens above as TXC_API_TOKENS (role=token,...)
#   pg_password            the password of every PostgreSQL server
#
# The files are mode 0644 inside a 0700 directory: Docker Compose bind-mounts them into the
# containers with the host file's mode and owner, and the services run as a non-root user,
# so the file itself must be readable; the directory keeps other host users out.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 0700 "$dir"

write() { # write NAME CONTENT: atomically, mode 0644
    printf '%s' "$2" >"$dir/.$1.tmp"
    chmod 0644 "$dir/.$1.tmp"
    mv "$dir/.$1.tmp" "$dir/$1"
}

for name in cluster_secret bank_a_secret bank_b_secret admin_token client_token \
    participant_api_token read_token pg_password; do
    if [ -s "$dir/$name" ]; then
        echo "kept      $dir/$name"
        continue
    fi
    # 32 random bytes as hex: safe in URLs, headers, role=token lists and shell arguments.
    write "$name" "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "generated $dir/$name"
done

tokens="client=$(cat "$dir/client_token"),participant=$(cat "$dir/participant_api_token")"
tokens="$tokens,read=$(cat "$dir/read_token")"
if [ "$(cat "$dir/api_tokens" 2>/dev/null || true)" != "$tokens" ]; then
    write api_tokens "$tokens"
    echo "generated $dir/api_tokens"
fi

# The registry: the URLs are the banks' --public-url plus the SDK's /txc mount.
registry="# Written by deploy/make-secrets.sh from bank_a_secret and bank_b_secret.

[participants.bank-a]
secrets = [\"$(cat "$dir/bank_a_secret")\"]
urls = [\"http://bank-a:8001/txc\"]

[participants.bank-b]
secrets = [\"$(cat "$dir/bank_b_secret")\"]
urls = [\"http://bank-b:8002/txc\"]"
if [ "$(cat "$dir/participants" 2>/dev/null || true)" != "$registry" ]; then
    write participants "$registry"
    echo "generated $dir/participants"
fi

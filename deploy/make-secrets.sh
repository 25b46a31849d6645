#!/bin/sh
# Generate the secrets docker-compose.yml reads (deploy/secrets/*), once.
# Existing files are kept, so running it again changes nothing.
#
# The files are mode 0644 inside a 0700 directory: Docker Compose bind-mounts them into the
# containers with the host file's mode and owner, and the services run as a non-root user,
# so the file itself must be readable; the directory keeps other host users out.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 0700 "$dir"
for name in cluster_secret api_token participant_token pg_password; do
    file="$dir/$name"
    if [ -s "$file" ]; then
        echo "kept      $file"
        continue
    fi
    # 32 random bytes as hex: safe in URLs, headers and shell arguments.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file"
    chmod 0644 "$file"
    echo "generated $file"
done

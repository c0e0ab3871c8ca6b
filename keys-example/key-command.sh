#!/bin/sh
# Example key command, for examples and tests only.
#
# DriftDB runs `sh -c CMD` and reads the master key from its standard output
# (32 raw bytes, 64 hex digits or base64). Exit non-zero to refuse. Standard
# error is passed through, so the command may prompt or log there.
#
#   driftdb verify -d ./data --key-command ./keys-example/key-command.sh
#
# Real deployments fetch the key from a KMS, Vault or an HSM instead, e.g.
#   vault kv get -field=master_key secret/driftdb/prod
#   aws kms decrypt --ciphertext-blob fileb://master.key.enc --query Plaintext --output text
# (the base64 that `aws kms decrypt` prints is accepted as is).
set -eu
here=$(dirname "$0")
grep -v '^#' "$here/example-master.key"

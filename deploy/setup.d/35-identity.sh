#!/usr/bin/env bash
# parts: test
# The OpenID Connect provider the approval tests sign in at, built from Go modules and cached
# by version and source; see deploy/identity/build.sh.
set -euo pipefail
exec bash deploy/identity/build.sh

# Sourced by scripts/serve and scripts/test: make ./.venv and install Bulletin into it,
# again only when pyproject.toml has changed since the last install.
ensure_venv() {
  local extras="$1"
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Bulletin needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv ..." >&2
    "$python" -m venv .venv
  fi
  local spec="." stamp
  [ -n "$extras" ] && spec=".[$extras]"
  stamp=".venv/.installed-${extras:-base}"
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing Bulletin and its dependencies into .venv ..." >&2
    # Some machines list package indexes that do not exist; pip warns about each, harmlessly.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip \
      2> >(grep -v "^WARNING: Location .* is ignored" >&2)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" \
      2> >(grep -v "^WARNING: Location .* is ignored" >&2)
    echo "$want" > "$stamp"
  fi
}

# Shared by scripts/test and scripts/demo: install and start what the project needs.
step() { printf '\n== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* with your package manager"
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_uv() {
  if ! command -v uv >/dev/null; then
    step "installing uv (Python package manager)"
    python3 -m pip install -q uv || die "could not install uv: pip install uv"
  fi
}

ensure_python_env() {
  step "Python environment (uv sync)"
  uv sync --frozen --quiet
}

ensure_debian_package() {  # command package
  if ! command -v "$1" >/dev/null; then
    step "installing $2 (Debian package) for $1"
    apt_install "$2" || die "could not install $2: apt-get install $2"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do port_open "$1" && return 0; sleep 0.2; done
  return 1
}

ensure_postgres() {
  port_open 5432 && return 0
  step "starting PostgreSQL"
  command -v pg_ctlcluster >/dev/null || die "PostgreSQL is not running on 127.0.0.1:5432 and not installed: apt-get install postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -n 1)" main start || true
  wait_port 5432 || die "PostgreSQL did not start on 127.0.0.1:5432"
  psql -h 127.0.0.1 -U postgres -lqt 2>/dev/null | cut -d'|' -f1 | grep -qw test \
    || createdb -h 127.0.0.1 -U postgres test || true
}

ensure_redis() {
  port_open 6379 && return 0
  step "starting Redis"
  command -v redis-server >/dev/null || die "Redis is not running on 127.0.0.1:6379 and not installed: apt-get install redis-server"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 || die "Redis did not start on 127.0.0.1:6379"
}

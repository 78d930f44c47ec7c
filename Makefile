# Two commands a user needs: `make demo` and `make test` (each installs first when .venv is missing).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= outputs/demo

.PHONY: install test test-slow lint format demo demo-full bench clean cluster-deps test-cluster

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -m "not slow and not cluster" -q

test-slow: install
	$(PY) -m pytest -m "slow and not cluster" -q

# A real single-node SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) for tests/cluster, in
# Debian's packages; each package is installed only where it is missing.
CLUSTER_PACKAGES := slurmctld slurmd slurm-client munge slurmdbd slurm-wlm-mysql-plugin \
	mariadb-server-core mariadb-client-core
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

cluster-deps:
	@missing=$$(for p in $(CLUSTER_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing" $$missing; \
		log=$$(mktemp); \
		if ! { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing; } >$$log 2>&1; then \
			cat $$log; rm -f $$log; exit 1; \
		fi; \
		rm -f $$log; \
	fi

# Brings the cluster up, runs the cluster tests on it, and brings it down whatever happens (a failing test,
# Ctrl+C): no daemon is left behind. CLUSTER_REQUIRED: a cluster that does not answer fails the tests
# instead of skipping them.
test-cluster: install cluster-deps
	@trap 'tests/cluster/local_slurm.sh down' EXIT; trap 'exit 130' INT TERM; \
	env_line=$$(tests/cluster/local_slurm.sh up) && eval "$$env_line" && \
	CLUSTER_REQUIRED=1 $(PY) -m pytest -m cluster tests/cluster -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(PY) -m experiments.demo $(OUT)

# the demo with the 110-layer nets, 2-D surfaces, path lengths and curvature, and ten seeds of each net at
# one thread and at two: the check that its verdicts do not hinge on rounding (about 15 minutes on 2 cores)
demo-full: install
	$(PY) -m experiments.demo --full $(OUT)

bench: install
	$(PY) bench/memory.py
	$(PY) bench/speed.py
	$(PY) bench/step_profile.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache

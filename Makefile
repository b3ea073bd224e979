# make run / make test work on a fresh Debian machine as root (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export DEBIAN_FRONTEND := noninteractive

.PHONY: run test test-fast test-cluster lint bench tools venv clean

$(STAMP): setup.cfg pyproject.toml
	@# Debian's python3 needs python3-venv (ensurepip) before it can make a venv.
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); apt-get update -qq && \
	  apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

venv: $(STAMP)

# The external clients the interop tests and benchmarks drive; installed only when missing.
# What is checked is what the tests use, not that a command exists: swaks installed
# without its recommends cannot do TLS ("*** TLS not available: requires Net::SSLeay"),
# so its own `--support` list must say "TLS supported"; curl must speak imaps and pop3s,
# fetchmail must be built with SSL. (isync and dovecot link OpenSSL unconditionally.)
tools:
	@missing=""; \
	swaks --support 2>&1 | grep -q '^=== TLS supported' || missing="$$missing swaks libnet-ssleay-perl"; \
	curl -V 2>/dev/null | grep -q '^Protocols:.* imaps .*pop3s' || missing="$$missing curl"; \
	[ -x /usr/sbin/postfix ] || missing="$$missing postfix"; \
	command -v smtp-source >/dev/null || [ -x /usr/sbin/smtp-source ] || missing="$$missing postfix"; \
	fetchmail -V 2>/dev/null | grep -q '+SSL' || missing="$$missing fetchmail"; \
	command -v mbsync >/dev/null || missing="$$missing isync"; \
	[ -x /usr/sbin/dovecot ] || missing="$$missing dovecot-core"; \
	/sbin/ldconfig -p | grep -q 'libunwind\.so\.8 ' || missing="$$missing libunwind8"; \
	[ -x /usr/lib/dovecot/imap ] || missing="$$missing dovecot-imapd"; \
	[ -x /usr/lib/dovecot/pop3 ] || missing="$$missing dovecot-pop3d"; \
	command -v pebble >/dev/null || missing="$$missing pebble"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	perl -MMail::DKIM::Verifier -e1 2>/dev/null || missing="$$missing libmail-dkim-perl"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v fail2ban-regex >/dev/null || missing="$$missing fail2ban"; \
	[ -x /usr/sbin/unbound ] || missing="$$missing unbound"; \
	command -v ldns-signzone >/dev/null || missing="$$missing ldnsutils"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -f /usr/lib/nginx/modules/ngx_mail_module.so ] || missing="$$missing libnginx-mod-mail"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v sshfs >/dev/null || missing="$$missing sshfs"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# mailauth (npm), the independent DKIM/SPF/DMARC judge of tests/senderauth.
	[ -x tests/tools/node_modules/.bin/mailauth ] || \
	  npm ci --prefix tests/tools --no-audit --no-fund >/dev/null

run: $(STAMP)
	$(VENV)/bin/twistd -n --pidfile= mailserver $(if $(CONFIG),--config $(CONFIG),)

test: $(STAMP) tools
	$(VENV)/bin/ruff check mailserver tests twisted bench
	$(VENV)/bin/mypy mailserver
	@# Four workers, one test file each at a time (module fixtures stay shared): most
	@# of the suite waits on real servers, throttle delays and timeouts, not the CPU
	@# (serial 9 min 50 s, four workers 5 min 45 s on the 2-core CI machine). The
	@# multi-node rig runs after it, alone: its timings judge failover and IDLE.
	$(VENV)/bin/pytest -n 4 --dist loadfile --ignore=tests/cluster
	$(MAKE) test-cluster

# The multi-node rig (tests/cluster: network namespaces, nginx, three nodes, sshfs); root.
test-cluster: $(STAMP) tools
	$(VENV)/bin/pytest tests/cluster

test-fast: $(STAMP)
	$(VENV)/bin/pytest -x -q

lint: $(STAMP)
	$(VENV)/bin/ruff check mailserver tests twisted bench
	$(VENV)/bin/mypy mailserver

# Each benchmark runs ours and Postfix or Dovecot side by side (about 30 minutes in all).
bench: $(STAMP) tools
	$(PY) bench/smtp_accept.py
	$(PY) bench/submission.py
	$(PY) bench/api_send.py
	$(PY) bench/relay.py
	$(PY) bench/pop3.py
	$(PY) bench/imap.py
	$(PY) bench/imaptest_stress.py

clean:
	rm -rf $(VENV) build *.egg-info

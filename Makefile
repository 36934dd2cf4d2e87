# same_search: the two commands are `make run` and `make test`; everything else is optional.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test install lint proto bench bench-million bench-recall-clusters bench-flat-scan bench-milvus bench-precision eval eval-same-picture bench-same-picture-cost eval-reranking eval-learned-space bench-learned-index eval-daemon eval-reach bench-query-expansion bench-ranking bench-admission soak clean bench-daemon-million

# Create the virtual environment and install the project with its test tools. Re-runs only
# when pyproject.toml changes. torch/torchvision are pinned there (they install from local disk).
# pip byte-compiles its 9,400 modules on one core (30 s of an 87 s install on 2 cores);
# compileall does the same on every core (18 s), so imports never compile from source, not even
# where PYTHONDONTWRITEBYTECODE is set. A few files are written for newer Pythons (torch's
# py312 test helpers) and do not compile: pip skips them, so its failure is not ours.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") >/dev/null 2>&1 || true
	touch $(STAMP)

install: $(STAMP)

# Start the daemon with ./config.toml (ports 8120, 8025, 8103 on 127.0.0.1, data in ./data);
# ARGS='--search-port 9025 --admin-port 9103 --feature-port 9120 --data-dir /tmp/ss' passes flags to it.
run: $(STAMP)
	$(BIN)/python -m same_search --config config.toml $(ARGS)

# The whole suite on one worker more than the cores this process may use (at most 4: many tests
# wait on a daemon they started, so a third worker on 2 cores took the suite from 7.3 to 6.5
# minutes and a fourth gained nothing); exits non-zero if anything fails or no test ran.
# PYTEST_ARGS="-n 0" runs it in one process. The project's modules are byte-compiled first: the
# suite starts about eighty daemons, and where PYTHONDONTWRITEBYTECODE is set each compiled all
# of them from source again (0.16 CPU-s a start).
WORKERS := $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0)) + 1))" 2>/dev/null || echo 2)
PYTEST_ARGS ?= -n $(WORKERS)
test: $(STAMP)
	$(BIN)/python -m compileall -q same_search tests >/dev/null
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check same_search tests bench
	$(BIN)/ruff format --check same_search tests bench

# Regenerate the protobuf module (needs grpcio-tools==1.66.2, protoc 27, so the generated code
# runs on any protobuf runtime >= 5.27).
proto:
	$(BIN)/python -m grpc_tools.protoc -Isame_search/proto --python_out=same_search/proto \
		--pyi_out=same_search/proto same_search/proto/imgfeature.proto

# Daemon vs bare model (HTTP add/search, an import job, the daemon's own plan run bare), our index
# vs bare hnswlib; names the CPU's arithmetic flags and the precision auto picked; prints one table
# and appends it to docs/benchmarks-history.md (about 10 minutes on 2 cores; --preset large adds 1M
# vectors); docs/benchmarks.md keeps today's figures, copied there by hand.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Retrieval quality on ../shared/data (skips when absent): every variant of docs/quality.md,
# the pHash baseline and the same-picture threshold; about 35 minutes on 2 cores.
eval: $(BENCH_STAMP)
	$(BIN)/python bench/eval_quality.py --budget-min 45

# The same-picture decision (search's same_picture) on the harder protocol: strong edits,
# look-alike negatives, product shots on white; writes bench/same_picture_results.md. About
# 15 minutes on 2 cores the first time (pictures, vectors and local features are then cached
# under /tmp/same_search-eval-cache), 3 minutes after.
eval-same-picture: $(BENCH_STAMP)
	$(BIN)/python bench/eval_same_picture.py

# The same-picture check's CPU cost with and without the coarse look and the deeper screen,
# taken in turn on the same queries; reads eval-same-picture's cache (run that first). A few
# minutes on 2 cores.
bench-same-picture-cost: $(BENCH_STAMP)
	$(BIN)/python bench/bench_same_picture_cost.py

# The category protocol with the 1,000 ImageNet photos as distractors: query expansion and the
# other re-ranking variants, per-class results, score calibration, EfficientNet-Lite0/1/2 with
# their CPU cost; writes bench/reranking_results.md. A few minutes per network the first time
# (vectors cached under /tmp/same_search-eval-cache), under a minute after.
eval-reranking: $(BENCH_STAMP)
	$(BIN)/python bench/eval_reranking.py

# A library's learned space against native cosine (docs/quality.md, "A library's learned space"):
# category P@10/mAP@100 with distractors, near-duplicate R@1 per edit, the same-picture decision
# with its floors refitted per space, plain/QE/DBA rankings; writes bench/learned_space_results.md.
# Reads eval-same-picture's cache (run that first); about 20 minutes on 2 cores under load, most
# of it the first embedding of the edited copies (cached under /tmp/same_search-eval-cache).
eval-learned-space: $(BENCH_STAMP)
	$(BIN)/python bench/eval_learned_space.py --same-picture

# The index of a library in its learned space: graph bytes per item and recall@10 against exact
# search in that space, on descriptor-like vectors (N=100000: about 30 minutes on 2 cores).
N ?= 100000
bench-learned-index: $(BENCH_STAMP)
	$(BIN)/python bench/bench_learned_index.py --n $(N)

# The quality a client sees: the real daemon on its defaults, asked over HTTP (category protocol
# with distractors; the same-picture protocol's recall@1 per edit and same_picture's precision
# and recall). About 20 minutes on 2 cores; reads eval-same-picture's cached sets when present.
eval-daemon: $(BENCH_STAMP)
	$(BIN)/python bench/eval_daemon.py

# What query expansion and promotion cost per search on the real daemon (1,000 photos; every row
# repeated 5 times, reported as the median and range of the repeats; about 10 minutes).
bench-query-expansion: $(STAMP)
	$(BIN)/python bench/bench_query_expansion.py

# What a library that chose re-ranking costs: throughput over HTTP of searches by image in a
# re-ranked library against one in the spec's order, same daemon, same photos, 8 clients,
# alternating runs (RUNS=5); with the promotion outcomes (where the check was paid). About 3
# minutes on 2 cores.
RUNS ?= 5
bench-ranking: $(STAMP)
	$(BIN)/python bench/bench_ranking_cost.py --runs $(RUNS)

# Where the same-picture check is worth its cost: the lowest score of a confirmed copy on the
# same-picture protocol, and how many searches a floor (REACH) lets skip the check. Reads
# eval-same-picture's cache (run that first).
eval-reach: $(BENCH_STAMP)
	$(BIN)/python bench/eval_reach.py

# A small search's p50/p99 idle and while 20 clients send 8192 x 8192 single-colour PNGs (admission
# by decode cost, err_no 99 past the budget), with the shed count and the daemon's memory; about
# 3 minutes. CODE=DIR runs another checkout's daemon (before/after), RETRY_S=0.05 clients that
# retry a 99 every 50 ms instead of backing off as same_search's own clients do.
bench-admission: $(STAMP)
	$(BIN)/python bench/bench_admission.py $(if $(CODE),--code $(CODE)) $(if $(RETRY_S),--retry-s $(RETRY_S))

# The index engine at N items (default 1M; N=200000 to develop): the daemon's reduced index
# (re-ranked) against bare hnswlib, recall@10, p50/p99, tag filters, memory, load time.
N ?= 1000000
bench-million: $(STAMP)
	nice $(BIN)/python bench/bench_million.py --n $(N)

# The daemon with DAEMON_ITEMS (default 1M) items, end to end over HTTP: import as export ZIPs,
# ready after a restart, search p50/p99 and recall@10 idle and while 8 clients add, a rebuild while
# serving, near-duplicate R@1 among the items, the native vectors under a memory cgroup limit.
# About an hour on 2 cores; DAEMON_ITEMS=20000 in a few minutes.
DAEMON_ITEMS ?= 1000000
bench-daemon-million: $(STAMP)
	nice $(BIN)/python bench/bench_daemon_million.py --items $(DAEMON_ITEMS)

# A catalogue of tight near-duplicate clusters (ITEMS, default 100k) over HTTP: the recall
# the library measures and tunes for itself, recall@10 checked from outside (unfiltered and with a
# 50% tag filter) and the search p50/p99. About 15 minutes at 100k on 2 cores.
ITEMS ?= 100000
bench-recall-clusters: $(STAMP)
	nice $(BIN)/python bench/bench_recall_clusters.py --items $(ITEMS)

# The same catalogue in one process: the graph's deepest tuned depth against the flat scan tier
# (index/flat.py), recall@10 and p50/p99 unfiltered and with the 50% tag (about 5 minutes idle).
FLAT_DEPTHS ?= 4800x4800,flat2400,flat3200,flat4800
bench-flat-scan: $(STAMP)
	nice $(BIN)/python bench/bench_recall_clusters.py --items $(ITEMS) --in-process-depths $(FLAT_DEPTHS)

# The daemon on the Milvus backend (a milvus-lite server of its own) against the same pymilvus
# calls, alternating, at 2k and 20k items: what the daemon adds to a search (about 10 minutes).
bench-milvus: $(STAMP)
	$(BIN)/python bench/bench_milvus.py

# Speed and vector drift of fp32 / bf16 / int8 forward passes on this CPU (about 5 minutes).
bench-precision: $(STAMP)
	$(BIN)/python bench/bench_precision.py

# Mixed load with a kill -9 in the middle; SOAK_SECONDS=600 for the recorded run.
SOAK_SECONDS ?= 120
soak: $(STAMP)
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS) --clients 16

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

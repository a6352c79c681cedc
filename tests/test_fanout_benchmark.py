"""benchmarks/fanout.py still runs and counts what it claims (no timings asserted: those are figures)."""

from benchmarks import fanout


def test_fanout_quick_run_counts_writes_and_runs_the_floors():
    systems = ("swarm-memory", "swarm-file", "swarm-memory-greenlets", "swarm-file-greenlets", "thread-floor", "asyncio-floor",
               "records-floor-memory", "records-floor-file")
    report = fanout.run(quick=True, systems=systems, log=lambda *_: None)
    results = report["results"]
    assert set(results) == set(systems)
    for name in ("swarm-memory", "swarm-file", "swarm-memory-greenlets", "swarm-file-greenlets"):  # the same on both runners
        r = results[name]
        # issue 2: a constant number of writes per node, at most 6, whatever the fan-out's size
        assert 4.5 < r["writes_per_extra_leaf"] <= 6 and r["writes_per_node_big"] <= 6, r
        assert r["ops_big"]["swap"] >= 60 and r["ops_big"]["create"] >= 2 * 60, r["ops_big"]
    for name in ("thread-floor", "asyncio-floor"):
        assert results[name]["writes_per_node_big"] == 0
        assert 0 < results[name]["efficiency"] <= 1.0
    for name in ("records-floor-memory", "records-floor-file"):  # 4 writes and 1 read per leaf, none for plan/supervisor
        r, leaves = results[name], 60
        assert r["ops_big"] == {"create": 3 * leaves, "swap": leaves, "read_versioned": leaves}, r["ops_big"]
        assert 0 < r["efficiency"] <= 1.0
    text = fanout.render_table(report)
    assert "Floors: the same fan-out as bare sleeps" in text and "floor: asyncio tasks" in text
    assert "Records floors:" in text and "memory://" in text.split("Records floors:")[1]
    assert {t["target"] for t in report["targets"]} >= {"file store <= 1.0 ms/node", "swarm memory:// writes/node <= 6",
                                                        "file store on greenlets <= 1.0 ms/node"}

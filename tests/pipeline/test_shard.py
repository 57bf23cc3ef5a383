import pytest

from pipeline.shard import Shard, parse_shard


def test_shards_partition_every_key_exactly_once():
    keys = [f"track-{i}.mp3" for i in range(500)]
    owners = [[s for s in range(3) if Shard(s, 3).owns(k)] for k in keys]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [s] for o in owners) for s in range(3)]
    assert min(sizes) > 120  # roughly balanced


def test_assignment_is_stable_when_items_are_added():
    before = {k: Shard(1, 4).owns(k) for k in ("a", "b", "c", "d")}
    after = {k: Shard(1, 4).owns(k) for k in ("a", "b", "c", "d", "e", "f")}
    assert all(after[k] == v for k, v in before.items())


def test_parse_from_flag_and_from_indexed_job_env():
    assert parse_shard("2/5", env={}) == Shard(2, 5)
    assert parse_shard(None, env={}) == Shard(0, 1)
    assert parse_shard(None, env={"JOB_COMPLETION_INDEX": "3", "TECHNOGAN_SHARD_COUNT": "4"}) == Shard(3, 4)
    assert parse_shard("1/2", env={"JOB_COMPLETION_INDEX": "3", "TECHNOGAN_SHARD_COUNT": "4"}) == Shard(1, 2)


@pytest.mark.parametrize("text", ["3", "a/b", "2/2", "-1/3", "1/0"])
def test_bad_shard_flags(text):
    with pytest.raises(ValueError, match="I/N"):
        parse_shard(text, env={})


def test_indexed_job_without_a_count_is_an_error():
    with pytest.raises(ValueError, match="TECHNOGAN_SHARD_COUNT"):
        parse_shard(None, env={"JOB_COMPLETION_INDEX": "0"})

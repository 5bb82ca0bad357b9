"""grain pipeline: determinism, per-process shards, bucketed padding, resumable state."""
import json

import numpy as np
import pytest

from act_jax.data import pipeline

PAD = 0


def _source(n=60, seed=0, max_len=70):
  """Records like the imitation dataset's: ids 1.. (never PAD), a 2-token target."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    ids = rng.integers(1, 1000, rng.integers(3, max_len), dtype=np.int32)
    mask = np.zeros_like(ids)
    mask[-2:] = 1
    out.append({"state_id": f"s{i}", "label": b"AB"[i % 2:i % 2 + 1],
                "input_ids": ids, "prompt_ids": ids[:-2], "loss_mask": mask})
  return out


def _ids(batches):
  return [tuple(b["meta"]["state_id"]) for b in batches]


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_same_seed_same_batches_other_seed_other_order():
  src = _source()
  kw = dict(batch_size=4, pad_id=PAD, shard_index=0, shard_count=1, meta=True)
  a = _take(pipeline.make_batches(src, seed=5, **kw), 20)
  b = _take(pipeline.make_batches(src, seed=5, **kw), 20)
  c = _take(pipeline.make_batches(src, seed=6, **kw), 20)
  assert _ids(a) == _ids(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
  assert _ids(a) != _ids(c)


def test_epochs_are_permutations_reshuffled_each_epoch():
  src = _source(n=48)
  it = pipeline.make_batches(src, batch_size=8, seed=1, pad_id=PAD, shard_index=0,
                             shard_count=1, num_epochs=2, meta=True)
  ids = [i for b in it for i in b["meta"]["state_id"]]
  assert len(ids) == 96
  first, second = ids[:48], ids[48:]
  assert sorted(first) == sorted(second) == sorted(r["state_id"] for r in src)
  assert first != second


def test_two_processes_split_disjointly_and_agree_on_shapes():
  src = _source(n=64)
  shards = [list(pipeline.make_batches(src, batch_size=4, seed=3, pad_id=PAD,
                                       shard_index=p, shard_count=2, num_epochs=1,
                                       meta=True)) for p in range(2)]
  assert len(shards[0]) == len(shards[1]) == 8
  seen = [{i for b in s for i in b["meta"]["state_id"]} for s in shards]
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {r["state_id"] for r in src}
  # Same padded length at every step on both processes (one global bucket).
  assert [b["tokens"].shape for b in shards[0]] == [b["tokens"].shape for b in shards[1]]
  # And together they are the single-process stream with a doubled batch.
  whole = list(pipeline.make_batches(src, batch_size=8, seed=3, pad_id=PAD,
                                     shard_index=0, shard_count=1, num_epochs=1,
                                     meta=True))
  assert [b0 + b1 for b0, b1 in zip(_ids(shards[0]), _ids(shards[1]))] == _ids(whole)


def test_finite_epochs_drop_only_the_partial_global_batch():
  src = _source(n=50)
  got = list(pipeline.make_batches(src, batch_size=4, seed=0, pad_id=PAD,
                                   shard_index=1, shard_count=3, num_epochs=2))
  assert len(got) == pipeline.num_batches(50, 4, 3, 2) == 100 // 12


@pytest.mark.parametrize("num_threads", [0, 2])
def test_resume_from_saved_state_gives_the_same_next_batch(num_threads):
  src = _source()
  kw = dict(batch_size=4, seed=9, pad_id=PAD, shard_index=1, shard_count=2,
            num_threads=num_threads, meta=True)
  it = pipeline.make_batches(src, **kw)
  _take(it, 7)  # Crosses the first epoch (30 records per process).
  saved = json.dumps(it.get_state())
  expected = _take(it, 3)
  resumed = pipeline.make_batches(src, **kw)
  resumed.set_state(json.loads(saved))
  got = _take(resumed, 3)
  assert _ids(got) == _ids(expected)
  for x, y in zip(got, expected):
    np.testing.assert_array_equal(x["tokens"], y["tokens"])


def test_supervised_batches_are_right_padded_into_buckets():
  src = _source()
  by_id = {r["state_id"]: r for r in src}
  buckets = (16, 32, 64, 128)
  it = pipeline.make_batches(src, batch_size=3, seed=0, pad_id=PAD, shard_index=0,
                             shard_count=1, bucket_lengths=buckets, meta=True)
  widths = set()
  for b in _take(it, 20):
    assert set(b) == {"tokens", "mask", "loss_mask", "target_index", "target_mask", "meta"}
    for row, idx, valid, lm in zip(b["tokens"], b["target_index"], b["target_mask"],
                                   b["loss_mask"]):  # the loss tokens, in order
      assert row[idx[valid]].tolist() == row[1:][lm[1:]].tolist()
    width = b["tokens"].shape[1]
    widths.add(width)
    lengths = [len(by_id[i]["input_ids"]) for i in b["meta"]["state_id"]]
    assert width == min(x for x in buckets if x >= max(lengths))
    for row, mask, lm, sid in zip(b["tokens"], b["mask"], b["loss_mask"],
                                  b["meta"]["state_id"]):
      rec = by_id[sid]
      n = len(rec["input_ids"])
      np.testing.assert_array_equal(row[:n], rec["input_ids"])
      assert (row[n:] == PAD).all() and mask.sum() == n and mask[:n].all()
      np.testing.assert_array_equal(lm[:n], rec["loss_mask"].astype(bool))
      assert not lm[n:].any()
  assert len(widths) > 1 and widths <= set(buckets)
  # Without meta (the default for supervised) the batch is arrays only.
  plain = next(pipeline.make_batches(src, batch_size=3, seed=0, pad_id=PAD,
                                     shard_index=0, shard_count=1))
  assert "meta" not in plain


def test_generation_batches_are_left_padded_with_meta():
  src = _source()
  by_id = {r["state_id"]: r for r in src}
  b = next(pipeline.make_batches(src, batch_size=5, seed=2, pad_id=PAD,
                                 mode="generation", shard_index=0, shard_count=1))
  assert set(b) == {"tokens", "mask", "meta"}
  for row, mask, sid, label in zip(b["tokens"], b["mask"], b["meta"]["state_id"],
                                   b["meta"]["label"]):
    ids = by_id[sid]["prompt_ids"]
    np.testing.assert_array_equal(row[len(row) - len(ids):], ids)
    assert (row[:len(row) - len(ids)] == PAD).all()
    assert mask.sum() == len(ids) and mask[-1]
    assert label == by_id[sid]["label"].decode()


def test_too_long_records_are_an_error_naming_them():
  src = _source()
  longest = max(src, key=lambda r: len(r["input_ids"]))
  with pytest.raises(ValueError, match=longest["state_id"]):
    pipeline.make_batches(src, batch_size=2, seed=0, pad_id=PAD, shard_index=0,
                          shard_count=1, max_len=len(longest["input_ids"]) - 1)
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.make_batches(src, batch_size=2, seed=0, pad_id=PAD, shard_index=2,
                          shard_count=2)


def test_bucket_helpers():
  assert pipeline.power_of_two_buckets(100, 16) == (16, 32, 64, 100)
  assert pipeline.power_of_two_buckets(64, 16) == (16, 32, 64)
  assert pipeline.bucket_for(33, (16, 32, 64)) == 64
  with pytest.raises(ValueError):
    pipeline.bucket_for(65, (16, 32, 64))


def test_group_by_length_pads_less_and_keeps_every_record_once_per_epoch():
  src = _source(n=96, seed=3)
  kw = dict(batch_size=4, seed=0, pad_id=0, shard_index=0, shard_count=1, num_epochs=1,
            meta=True, bucket_lengths=(16, 32, 48, 64, 80))
  plain = list(pipeline.make_batches(src, **kw))
  grouped = list(pipeline.make_batches(src, group_by_length=8, **kw))
  ids = lambda bs: sorted(i for b in bs for i in b["meta"]["state_id"])
  assert ids(grouped) == ids(plain) == sorted(r["state_id"] for r in src)
  width = lambda bs: sum(b["tokens"].shape[1] for b in bs)
  assert width(grouped) < width(plain)
  # Within a window of 8 batches, the batches' length ranges do not overlap.
  spans = sorted((b["mask"].sum(1).min(), b["mask"].sum(1).max()) for b in grouped[:8])
  assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
  # Deterministic per seed.
  again = list(pipeline.make_batches(src, group_by_length=8, **kw))
  assert [b["meta"]["state_id"] for b in again] == [b["meta"]["state_id"] for b in grouped]

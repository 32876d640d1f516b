import json
import os

from racerl_jax.dashboard.files import JsonDoc, TailFile


def test_tail_file_returns_only_new_whole_lines_and_holds_a_half_written_one_until_its_newline(tmp_path):
    path = tmp_path / "log.jsonl"
    tail = TailFile(path)
    assert tail.read() == ([], False)  # not there yet: empty, no error
    with open(path, "wb") as f:
        f.write(b'{"a": 1}\n{"b": ')
        f.flush()
        assert tail.read() == ([{"a": 1}], False)
        assert tail.read() == ([], False)
        f.write(b'2}\n')
        f.flush()
        assert tail.read() == ([{"b": 2}], False)
    assert tail.bad_lines == 0


def test_tail_file_skips_and_counts_damaged_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n[1, 2]\n{"x": NaN}\n{"b": 2}\n')
    tail = TailFile(path)
    assert tail.read() == ([{"a": 1}, {"b": 2}], False)
    assert tail.bad_lines == 3


def test_tail_file_reads_a_replaced_or_truncated_file_again_from_the_start(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    tail = TailFile(path)
    assert len(tail.read()[0]) == 2
    tmp = tmp_path / "new.tmp"
    tmp.write_text('{"b": 1}\n')
    os.replace(tmp, path)  # atomically replaced, by a shorter file
    assert tail.read() == ([{"b": 1}], True)
    path.write_text("")  # truncated in place
    assert tail.read() == ([], True)
    os.remove(path)
    assert tail.read() == ([], True)  # removed: what was read no longer holds
    assert tail.read() == ([], False)


def test_tail_file_in_a_directory_that_appears_later_starts_reading_when_it_does(tmp_path):
    tail = TailFile(tmp_path / "later" / "log.jsonl")
    assert tail.read() == ([], False)
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "log.jsonl").write_text('{"a": 1}\n')
    assert tail.read() == ([{"a": 1}], False)


def test_json_doc_rereads_only_a_changed_file_and_keeps_the_last_good_value_over_a_broken_one(tmp_path):
    path = tmp_path / "config.json"
    doc = JsonDoc(path)
    assert not doc.read() and doc.value is None
    path.write_text(json.dumps({"seed": 1}))
    assert doc.read() and doc.value == {"seed": 1}
    assert not doc.read()
    path.write_text('{"seed": ')  # caught in the middle of an in-place write
    assert not doc.read() and doc.value == {"seed": 1} and "config.json" in doc.error
    path.write_text(json.dumps({"seed": 22}))
    assert doc.read() and doc.value == {"seed": 22} and doc.error == ""
    os.remove(path)
    assert doc.read() and doc.value is None

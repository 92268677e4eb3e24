"""Property: whatever a label line holds, the parser answers with a record or the
project's own one-line error; it never raises anything else."""

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traffic_retrieval.data.labels import LabelError, LabelRecord, parse_label_line, read_label_file
from traffic_retrieval.errors import TrafficRetrievalError

PIECES = st.sampled_from(["$", "$", ",", ",", "0", "1", "2", "-1", " ", ".", "..", "/", "\\", "\r", "\ufeff", "\x00", "\t",
                          "white", "Audi", "Truck", "Golden Dragon", "a.jpg", "é", "²", "٣", "\u2028", "\x85"])
FLAG_RUN = st.lists(st.sampled_from(["0", "1", " 1", "2", "", "x"]), min_size=18, max_size=24).map(",".join)
LINES = st.lists(st.one_of(PIECES, FLAG_RUN, st.text(max_size=6)), max_size=24).map("".join)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(LINES)
def test_parse_label_line_returns_a_record_or_a_label_error(line):
    try:
        record = parse_label_line(line, "labels.txt", 3)
    except LabelError as error:
        assert str(error).startswith("labels.txt:3: ") and "\n" not in str(error)
        return
    assert isinstance(record, LabelRecord) and record.image_name and record.text and record.source == "labels.txt:3"
    assert record.category in ("pedestrian", "vehicle") and "$" not in record.image_name + record.attr + record.text


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.binary(max_size=40), LINES.map(lambda s: s.encode("utf-8", "surrogatepass")),
                          LINES.map(lambda s: s.encode("latin-1", "replace"))), max_size=12),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_read_label_file_never_raises_and_accounts_for_every_line(chunks, line_end, strict):
    body = line_end.join(chunks)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "train_label.txt"
        path.write_bytes(body)
        try:
            records, errors = read_label_file(path, strict=strict)
        except TrafficRetrievalError as error:  # strict: the first bad line
            assert strict and isinstance(error, LabelError) and str(error).startswith(f"{path}:")
            return
    # every line is a record or a counted error, except blank lines at the very end of the file
    lines = body.split(b"\n")
    lines[0] = lines[0].removeprefix(b"\xef\xbb\xbf")
    while lines and not lines[-1].strip():
        lines.pop()
    assert len(records) + len(errors) == len(lines)
    assert all(error.path == str(path) and error.line_number is not None for error in errors)

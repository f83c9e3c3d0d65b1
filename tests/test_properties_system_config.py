"""Property-based tests: the system parsers and the configuration never fail in an unforeseen way."""

import math

import yaml
from hypothesis import given, settings, strategies as st

from exporter.collectors.system import meminfo_pages, parse_meminfo, parse_vm_stat
from exporter.config import ConfigError, parse_config, parse_size

printable = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400)


@given(printable)
def test_vm_stat_parser_only_raises_value_error(text):
    try:
        page_size, pages = parse_vm_stat(text)
    except ValueError:
        return
    assert page_size > 0 and page_size & (page_size - 1) == 0
    assert pages and all(isinstance(v, int) and v >= 0 for v in pages.values())


vm_stat_lines = st.lists(st.tuples(
    st.sampled_from(["Pages free", "Pages active", "Pages wired down", "File-backed pages", "Anonymous pages",
                     '"Translation faults"', "Pages occupied by compressor", "Bogus", ""]),
    st.one_of(st.integers(0, 2**62).map(str), st.text(max_size=12))), max_size=20)


@given(st.sampled_from([4096, 16384, 0, 12345, 2**40]), vm_stat_lines)
def test_vm_stat_parser_with_near_valid_input(page_size, lines):
    text = f"Mach Virtual Memory Statistics: (page size of {page_size} bytes)\n" + \
        "\n".join(f"{label}: {value}." for label, value in lines)
    try:
        size, pages = parse_vm_stat(text)
    except ValueError:
        return
    assert size == page_size
    assert all(v >= 0 for v in pages.values())


@given(printable)
def test_meminfo_parser_only_raises_value_error(text):
    try:
        fields = parse_meminfo(text)
    except ValueError:
        return
    assert all(v >= 0 for v in fields.values())
    assert all(v >= 0 for v in meminfo_pages(fields, 4096).values())


@given(st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), printable, st.booleans(), st.none(),
                 st.builds(lambda n, u: f"{n}{u}", st.floats(0, 1e6, allow_nan=False),
                           st.sampled_from(["", "MB", "MiB", "GB", "gib", "XB", " kB"]))))
def test_sizes_are_a_non_negative_int_or_value_error(value):
    try:
        size = parse_size(value)
    except ValueError:
        return
    assert isinstance(size, int) and size >= 0 and not math.isnan(size)


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.text(max_size=20),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=20)
config_keys = st.sampled_from(["profile", "budgets", "node", "docker", "ollama", "lmstudio", "process_groups",
                               "system", "timeout", "bogus"])


@settings(max_examples=300)
@given(st.dictionaries(config_keys, yaml_values, max_size=6))
def test_any_document_is_a_config_or_a_config_error(document):
    text = yaml.safe_dump(document)
    try:
        config = parse_config(text)
    except ConfigError as exc:
        assert str(exc)
        return
    assert config.profile in ("development", "production")
    assert all(isinstance(v, int) and v >= 0 for v in config.budgets.values())
    assert 0 < config.timeout <= 60


@given(printable)
def test_any_text_is_a_config_or_a_config_error(text):
    try:
        parse_config(text)
    except ConfigError:
        pass

"""Bad input gets a clear error naming the field and value, and writes nothing."""

from __future__ import annotations

from datetime import datetime

import pytest

from redgov import (
    ApprovalRecord,
    Backplane,
    ConfigurationVersion,
    ExperimentState,
    LifecycleState,
    PolicyEvaluation,
    Severity,
    StateTransition,
    ValidationError,
)
from redgov.codec import MAX_RECORD_BYTES


def nothing_written(bp: Backplane) -> bool:
    return not list(bp.client.scan_iter(match="{" + bp.prefix + ":*"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ExperimentState(experiment="", state=LifecycleState.DRAFT), "experiment must not be empty"),
        (lambda: ExperimentState(experiment=5, state=LifecycleState.DRAFT), "experiment"),  # type: ignore[arg-type]
        (lambda: ExperimentState(experiment="e", state="Bogus"), "Bogus"),  # type: ignore[arg-type]
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, metadata={"x": object()}),
         "cannot be stored"),
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, last_modified=datetime(2026, 1, 1)),
         "timezone"),
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, tenant=7), "tenant"),  # type: ignore[arg-type]
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, last_modified_by=""), "last_modified_by"),
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, config_version=-1), "config_version"),
        (lambda: ExperimentState(experiment="e", state=LifecycleState.DRAFT, metadata={"blob": "x" * MAX_RECORD_BYTES}),
         "limit"),
        (lambda: ExperimentState(experiment="x" * 2000, state=LifecycleState.DRAFT), "limit is 1024"),
        (lambda: ExperimentState(experiment="\ud800", state=LifecycleState.DRAFT), "experiment"),
    ],
)
def test_bad_state_is_refused_before_any_write(backplane: Backplane, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=message):
        backplane.save_state(make())
    assert nothing_written(backplane)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda bp: bp.append_transition(StateTransition(experiment="e", to_state="Nope")), "Nope"),
        (lambda bp: bp.append_transition(StateTransition(experiment="e", to_state=LifecycleState.DRAFT,
                                                         transition_id="")),
         "transition_id"),
        (lambda bp: bp.append_approval(ApprovalRecord(experiment="e", to_state=LifecycleState.DRAFT, approved="yes")),
         "approved"),
        (lambda bp: bp.append_version(ConfigurationVersion(experiment="e", version=0, configuration={})),
         "version number"),
        (lambda bp: bp.append_version(ConfigurationVersion(experiment="e", version=True, configuration={})),
         "version number"),
        (lambda bp: bp.append_version(ConfigurationVersion(experiment="e", version=1, configuration=[1])),
         "configuration"),
        (lambda bp: bp.append_policy_evaluation(PolicyEvaluation(experiment="e", policy="", compliant=True,
                                                                 severity=Severity.INFO)),
         "policy"),
        (lambda bp: bp.append_policy_evaluation(PolicyEvaluation(experiment="e", policy="p", compliant=True,
                                                                 severity="Loud")),
         "Loud"),
        (lambda bp: bp.append_transition({"experiment": "e"}), "takes a StateTransition"),
        (lambda bp: bp.save_state(ExperimentState(experiment="e", state=LifecycleState.DRAFT), expected_etag=""),
         "expected_etag"),
        (lambda bp: bp.get_state(None), "experiment must be a string"),
        (lambda bp: bp.get_state("e", tenant=3), "tenant"),
        (lambda bp: bp.version("e", "2"), "version number"),
        (lambda bp: bp.append_version(ConfigurationVersion(experiment="e", version=2**53, configuration={})),
         r"version number must be an integer from 1 to 2\*\*53 - 1, got 9007199254740992"),
        (lambda bp: bp.version("e", 2**53 + 1), "2\\*\\*53 - 1"),
    ],
)
def test_bad_input_everywhere(backplane: Backplane, call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=message):
        call(backplane)
    assert nothing_written(backplane)


def test_validation_errors_are_value_errors_too() -> None:
    assert issubclass(ValidationError, ValueError)


# -- names: nothing invisible, nothing that reorders (issue 16, "Look-alike names") ------------------

HIDDEN_NAMES = [
    ("safe\u202egnp.exe", 4, "U+202E RIGHT-TO-LEFT OVERRIDE", "bidirectional control"),
    ("checkout\u200b", 8, "U+200B ZERO WIDTH SPACE", "invisible format character"),
    ("\u2066x\u2069", 0, "U+2066 LEFT-TO-RIGHT ISOLATE", "bidirectional control"),
    ("a\u200eb", 1, "U+200E LEFT-TO-RIGHT MARK", "bidirectional control"),
    ("a\u061cb", 1, "U+061C ARABIC LETTER MARK", "bidirectional control"),
    ("co\u00adlor", 2, "U+00AD SOFT HYPHEN", "invisible format character"),
    ("\ufeffbom", 0, "U+FEFF ZERO WIDTH NO-BREAK SPACE", "invisible format character"),
    ("a\u2060b", 1, "U+2060 WORD JOINER", "invisible format character"),
    ("a\u200db", 1, "U+200D ZERO WIDTH JOINER", "invisible format character"),
    ("tag\U000e0041", 3, "U+E0041 TAG LATIN CAPITAL LETTER A", "invisible format character"),
    ("a\u034fb", 1, "U+034F COMBINING GRAPHEME JOINER", "invisible character"),
    ("\u3164", 0, "U+3164 HANGUL FILLER", "invisible character"),
    ("x\ufe0f", 1, "U+FE0F VARIATION SELECTOR-16", "invisible character"),
    ("\u2800", 0, "U+2800 BRAILLE PATTERN BLANK", "blank character"),
    ("a\u00a0b", 1, "U+00A0 NO-BREAK SPACE", "space other than U+0020"),
    ("a\u3000b", 1, "U+3000 IDEOGRAPHIC SPACE", "space other than U+0020"),
    ("line\u2028two", 4, "U+2028 LINE SEPARATOR", "line separator"),
    ("para\u2029two", 4, "U+2029 PARAGRAPH SEPARATOR", "paragraph separator"),
    ("pua\ue000", 3, "U+E000 <private use>", "private-use character"),
    ("x\U0010fffd", 1, "U+10FFFD <private use>", "private-use character"),
    ("un\u0378", 2, "U+0378 <unassigned>", "unassigned"),
    ("nonchar\ufdd0", 7, "U+FDD0 <unassigned>", "unassigned"),
    ("tab\there", 3, "U+0009 <control>", "control character"),
    ("del\x7f", 3, "U+007F <control>", "control character"),
    ("\ud800", 0, "U+D800 <surrogate>", "not valid Unicode text"),
]


@pytest.mark.parametrize(("name", "index", "described", "kind"), HIDDEN_NAMES)
def test_names_with_hidden_characters_are_refused_naming_the_character_and_index(
        name: str, index: int, described: str, kind: str) -> None:
    from redgov.validate import check_name, check_scope_part, hidden_char

    assert hidden_char(name) == index
    for check, field in ((check_name, "experiment"), (check_scope_part, "tenant")):
        with pytest.raises(ValidationError) as refused:
            check(name, field)
        message = str(refused.value)
        assert message.startswith(f"{field} {name!r} contains {described} (")
        assert f"{kind}" in message and f"at index {index};" in message
        assert not any(c in message for c in "\u202e\u200b\u2066\u200e\u061c\u2028\u2029")  # shown escaped


@pytest.mark.parametrize("name", [
    "checkout-button-color", "a b", "ünïcode-exp", "café", "客户-7", "тест", "α-β", "experiment 🚀", "👍🏽",
    "🇩🇪", "checkout\u2010button\u2010color", "cafe\u0301", "ｆｕｌｌ", "x" * 1024, "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./",
])
def test_visible_names_pass(name: str) -> None:
    """ASCII and ordinary non-ASCII names, emoji without joiners or selectors, and visible look-alikes
    (shown marked by the web pages, see test_lookalike) stay names."""
    from redgov.validate import check_name, hidden_char

    assert hidden_char(name) is None
    assert check_name(name, "experiment") == name


def test_the_names_rule_is_isprintable_plus_the_listed_invisibles() -> None:
    """Every code point this Python knows, against the rule written in the module: what
    ``str.isprintable`` refuses (Cc, Cf, Cs, Co, Cn, Zl, Zp, Zs but U+0020) and the default-ignorable
    letters and marks that draw nothing, with U+2800."""
    import unicodedata

    from redgov.validate import hidden_char

    refused_categories = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}
    drawn_as_nothing = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, *range(0x180B, 0x1810), 0x2800, 0x3164,
                        *range(0xFE00, 0xFE10), 0xFFA0, *range(0xE0100, 0xE01F0)}
    for code in range(0x110000):
        char = chr(code)
        expected = (unicodedata.category(char) in refused_categories and code != 0x20) or code in drawn_as_nothing
        assert (hidden_char(char) is not None) == expected, f"U+{code:04X}"


def test_a_hidden_name_is_refused_by_every_backplane_write_and_read(backplane: Backplane) -> None:
    bad = "safe\u202egnp.exe"
    for state in (ExperimentState(experiment=bad, state=LifecycleState.DRAFT),
                  ExperimentState(experiment="e", state=LifecycleState.DRAFT, tenant=bad),
                  ExperimentState(experiment="e", state=LifecycleState.DRAFT, environment=bad),
                  ExperimentState(experiment="e", state=LifecycleState.DRAFT, last_modified_by=bad)):
        with pytest.raises(ValidationError, match=r"U\+202E RIGHT-TO-LEFT OVERRIDE .* at index 4"):
            backplane.save_state(state)
    with pytest.raises(ValidationError, match=r"transition_id .* U\+200B ZERO WIDTH SPACE .* at index 1"):
        backplane.append_transition(StateTransition(experiment="e", to_state=LifecycleState.DRAFT,
                                                    transition_id="t\u200b"))
    with pytest.raises(ValidationError, match=r"policy .* U\+FEFF ZERO WIDTH NO-BREAK SPACE .* at index 0"):
        backplane.append_policy_evaluation(PolicyEvaluation(experiment="e", policy="\ufeffp", compliant=True,
                                                            severity=Severity.INFO))
    with pytest.raises(ValidationError, match=r"experiment .* at index 8"):
        backplane.get_state("checkout\u200b")
    assert nothing_written(backplane)


def test_free_text_keeps_hidden_characters(backplane: Backplane) -> None:
    """Reasons, descriptions and metadata are text, not names: stored and read back unchanged."""
    text = "ok \u202eevil\u202c \u200b\u00ad\u2028 \U0001f468\u200d\U0001f469 \u2764\ufe0f"
    backplane.save_state(ExperimentState(experiment="e", state=LifecycleState.DRAFT, metadata={"note": text}))
    written = backplane.append_transition(StateTransition(experiment="e", to_state=LifecycleState.DRAFT,
                                                          reason=text, metadata={text: text}))
    version = backplane.append_version(ConfigurationVersion(experiment="e", version=1, configuration={text: text},
                                                            description=text))
    assert backplane.get_state("e").metadata == {"note": text}  # type: ignore[union-attr]
    assert written.reason == text and version.description == text
    assert [t.reason for t in backplane.transitions("e")] == [text]
    assert backplane.version("e", 1).configuration == {text: text}  # type: ignore[union-attr]

from __future__ import annotations

import pytest
from flask import Flask

from flask_diag import Diag
from flask_diag import DiagConfigError
from flask_diag import Settings
from flask_diag import wrap
from flask_diag.settings import OPTIONS


def test_defaults() -> None:
    settings = Settings.load(environ={})
    assert settings.enabled is True
    assert settings.tagging is True
    assert settings.worker_headers is True
    assert settings.errors == "json"
    assert settings.debug_errors is False
    assert settings.request_id_header == "X-Request-ID"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(raw, expected, id=f"{raw}->{expected}")
        for raw, expected in [
            ("on", True),
            ("ON", True),
            (" yes ", True),
            ("1", True),
            ("true", True),
            ("off", False),
            ("0", False),
            ("False", False),
            ("no", False),
        ]
    ],
)
def test_bool_values(raw: str, expected: bool) -> None:
    settings = Settings.load(environ={"FLASK_DIAG_WORKER_HEADERS": raw})
    assert settings.worker_headers is expected


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        pytest.param("FLASK_DIAG_WORKER_HEADERS", "maybe", "on, off", id="bool"),
        pytest.param("FLASK_DIAG_WORKER_HEADERS", "", "on, off", id="empty-bool"),
        pytest.param("FLASK_DIAG", "disabled", "on, off", id="master"),
        pytest.param("FLASK_DIAG_ERRORS", "xml", "json, negotiate, off", id="choice"),
        pytest.param(
            "FLASK_DIAG_REQUEST_ID_HEADER", "X Request", "a header name", id="header"
        ),
        pytest.param(
            "FLASK_DIAG_SENTRY_CONFIRM", "60", "up to 30", id="confirm-too-long"
        ),
        pytest.param(
            "FLASK_DIAG_SENTRY_CONFIRM", "soon", "on (2 seconds) or off", id="confirm"
        ),
    ],
)
def test_invalid_environment_value_names_variable_value_and_accepted(
    variable: str, value: str, accepted: str
) -> None:
    with pytest.raises(DiagConfigError) as info:
        Settings.load(environ={variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable}={value!r} is not valid")
    assert accepted in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("on", 2.0), ("YES", 2.0), ("1", 1.0), ("0.5", 0.5), ("off", None), ("0", None)],
)
def test_sentry_confirm_values(raw: str, expected: float | None) -> None:
    settings = Settings.load(environ={"FLASK_DIAG_SENTRY_CONFIRM": raw})
    assert settings.sentry_confirm == expected
    assert Settings.load(environ={}).sentry_confirm == 2.0


@pytest.mark.parametrize(("value", "expected"), [(0, None), (0.0, None), (5, 5.0)])
def test_durations_from_code(value: float, expected: float | None) -> None:
    # "off (or 0)" holds for numbers given in code as for text.
    settings = Settings.load({"watchdog": value, "sentry_confirm": value}, environ={})
    assert settings.watchdog == expected
    assert settings.sentry_confirm == expected


def test_unknown_environment_variable_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(DiagConfigError, match="FLASK_DIAG_WORKER_HEADER is not") as e:
        Settings.load(environ={"FLASK_DIAG_WORKER_HEADER": "off"})
    assert "Did you mean FLASK_DIAG_WORKER_HEADERS?" in str(e.value)


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="worker_header"):
        Settings.load({"worker_header": False}, environ={})


def test_invalid_keyword_value_names_the_keyword() -> None:
    with pytest.raises(DiagConfigError, match=r"^errors='yaml' is not valid"):
        Settings.load({"errors": "yaml"}, environ={})


def test_precedence_defaults_keywords_config_environment() -> None:
    assert Settings.load({"errors": "off"}, environ={}).errors == "off"
    config = {"DIAG_ERRORS": "negotiate"}
    assert Settings.load({"errors": "off"}, config=config, environ={}).errors == (
        "negotiate"
    )
    environ = {"FLASK_DIAG_ERRORS": "json"}
    settings = Settings.load({"errors": "off"}, config=config, environ=environ)
    assert settings.errors == "json"


def test_config_value_error_names_the_config_key() -> None:
    with pytest.raises(DiagConfigError, match=r"^DIAG_ACCESS_LOG='loud' is not"):
        Settings.load(config={"DIAG_ACCESS_LOG": "loud"}, environ={})


def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(DiagConfigError, match="DIAG_ERRROS is not a flask_diag"):
        Settings.load(config={"DIAG_ERRROS": "json"}, environ={})


def test_python_booleans_accepted_for_choices_and_switches() -> None:
    settings = Settings.load({"errors": False, "access_log": True}, environ={})
    assert settings.errors == "off"
    assert settings.access_log is True


def test_every_option_has_names_and_documentation() -> None:
    for name, option in OPTIONS.items():
        assert option.env.startswith("FLASK_DIAG")
        assert option.config.startswith("DIAG_")
        assert option.doc and option.accepted, name
    assert OPTIONS["enabled"].env == "FLASK_DIAG"


def test_settings_are_frozen() -> None:
    settings = Settings.load(environ={})
    with pytest.raises(AttributeError):
        settings.errors = "off"  # type: ignore[misc]


def test_invalid_environment_fails_at_start_up_in_init_app(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_DIAG_TAGGING", "sometimes")
    with pytest.raises(DiagConfigError, match="FLASK_DIAG_TAGGING='sometimes'"):
        Diag(app)
    assert "diag" not in app.extensions


def test_invalid_environment_fails_at_start_up_in_wrap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLASK_DIAG", "perhaps")
    with pytest.raises(DiagConfigError, match="FLASK_DIAG='perhaps'"):
        wrap(lambda environ, start_response: [])


def test_integer_flags_from_config() -> None:
    # app.config.from_prefixed_env() turns "1" into the integer 1.
    settings = Settings.load(
        config={"DIAG_ACCESS_LOG": 1, "DIAG_TAGGING": 0}, environ={}
    )
    assert settings.access_log is True and settings.tagging is False
    with pytest.raises(DiagConfigError, match="DIAG_ACCESS_LOG=2 is not valid"):
        Settings.load(config={"DIAG_ACCESS_LOG": 2}, environ={})

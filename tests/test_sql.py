"""The fingerprint normaliser shared by SQLAlchemy and the raw drivers: no data survives it, names do."""

from __future__ import annotations

import pytest

from collector._sql import fingerprint

SECRET = "alice@example.com"


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM t WHERE id = $1", "SELECT * FROM t WHERE id = ?"),
        ("SELECT * FROM t WHERE id = %(id_1)s AND x::int > 3", "SELECT * FROM t WHERE id = ? AND x::int > ?"),
        ("SELECT * FROM t WHERE id IN ($1, $2, $3)", "SELECT * FROM t WHERE id IN (?)"),
        (
            "SELECT * FROM t WHERE id IN (1,2,3,4) AND name = 'it''s'",
            "SELECT * FROM t WHERE id IN (?) AND name = ?",
        ),
        ("INSERT INTO t2 (a, b) VALUES (?, ?), (?, ?),\n (?, ?)", "INSERT INTO t2 (a, b) VALUES (?)"),
        ("SELECT col1 FROM t1 WHERE t1.v = :v LIMIT 10", "SELECT col1 FROM t1 WHERE t1.v = ? LIMIT ?"),
        ("SELECT 0x1F, 1_000, .5, 1e10, 2.5E-3 FROM t", "SELECT ?, ?, ?, ?, ? FROM t"),
    ],
)
def test_fingerprint_normalises_literals_numbers_placeholders_and_lists(
    statement: str, expected: str
) -> None:
    assert fingerprint(statement) == expected


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            f"SELECT id FROM users -- looked up for {SECRET}\nWHERE id = $1",
            "SELECT id FROM users WHERE id = ?",
        ),
        (f"SELECT id /* caller: {SECRET} */ FROM users", "SELECT id FROM users"),
        (f"SELECT id /* outer /* nested */ {SECRET} */ FROM users", "SELECT id FROM users"),
        (f"SELECT $${SECRET}$$ AS email", "SELECT ? AS email"),
        (f"SELECT $body$ it's {SECRET} $$ still $body$ AS email", "SELECT ? AS email"),
        (f"SELECT E'{SECRET}\\' OR 1=1' AS email", "SELECT ? AS email"),
        (f"SELECT U&'{SECRET}', N'{SECRET}', B'0101', X'ff'", "SELECT ?, ?, ?, ?"),
        (f"SELECT id FROM users WHERE email = '{SECRET}'", "SELECT id FROM users WHERE email = ?"),
        (f"SELECT id FROM users WHERE note = 'unterminated {SECRET}", "SELECT id FROM users WHERE note = ?"),
        (f"SELECT id FROM users /* unterminated {SECRET}", "SELECT id FROM users"),
        (f"SELECT id FROM users WHERE x = $q$ unterminated {SECRET}", "SELECT id FROM users WHERE x = ?"),
        # a comment opener inside a string is the string's, and a quote inside a comment the comment's
        (f"SELECT '-- {SECRET}' /* it's */ FROM t", "SELECT ? FROM t"),
        # the name "some_e" followed by a plain string, not an E-string
        (f"SELECT some_e'{SECRET}'", "SELECT some_e?"),
    ],
)
def test_fingerprint_drops_comments_and_every_literal_form(statement: str, expected: str) -> None:
    assert fingerprint(statement) == expected
    assert "example" not in fingerprint(statement)


def test_fingerprint_keeps_double_quoted_names_as_written() -> None:
    # identifiers are the schema the code was written against, not values a client sent
    statement = 'SELECT "it\'s col 2", "a""b" FROM "User" WHERE "User"."id" = $1 -- "x"'
    assert fingerprint(statement) == 'SELECT "it\'s col 2", "a""b" FROM "User" WHERE "User"."id" = ?'
    assert fingerprint('SELECT * FROM "User"') != fingerprint('SELECT * FROM "Order"')

"""Row counts read from dumps as they stream by, whatever the piece boundaries."""

from __future__ import annotations

import pytest

from backup.sources import mysql, postgres

PG_DUMP = (
    b"--\n-- PostgreSQL database dump\n--\n\\restrict abc\nSET statement_timeout = 0;\n"
    b"CREATE TABLE public.\"Weird \"\"Name\"\"\" (x text);\n"
    b"CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$SELECT '\nCOPY public.fake (x) FROM somewhere'$$;\n"
    b"COPY public.\"Weird \"\"Name\"\"\" (x) FROM stdin;\n"
    b"a\\\\.\nb\tline with \\n escaped\n\\\\.\n"
    b"\\.\n"
    b"COPY public.empty (x) FROM stdin;\n\\.\n"
    b"COPY \"My Schema\".orders (id, note) FROM stdin;\n"
    + b"".join(b"%d\tnote %d COPY public.fake (x) FROM stdin;\n" % (i, i) for i in range(1000))
    + b"\\.\n"
    b"COPY public.big (x) FROM stdin;\n" + b"x" * 300 + b"\n" + b"y" * 100 + b"\n\\.\n"
    b"\\unrestrict abc\n"
)

MY_DUMP = (
    b"/*!40101 SET NAMES utf8mb4 */;\nDROP TABLE IF EXISTS `t`;\nCREATE TABLE `t` (`a` varchar(10)) ENGINE=InnoDB;\n"
    b"LOCK TABLES `t` WRITE;\n"
    b"INSERT INTO `t` VALUES\n(1,'a (paren'),\n(2,'quote \\' ),( and ; semicolon'),\n(3,NULL);\n"
    b"INSERT INTO `t` VALUES (4,'x'),(5,'it''s'),(6,0x28292C28);\n"
    b"UNLOCK TABLES;\n"
    b"INSERT INTO `odd``name` VALUES (1,'line\\nbreak');\n"
    b"DELIMITER ;;\nCREATE PROCEDURE p() BEGIN\nINSERT INTO `t` VALUES (7),(8);\nEND ;;\nDELIMITER ;\n"
)


def count(counter_class, data: bytes, size: int) -> dict[str, int]:
    counter = counter_class()
    for start in range(0, len(data), size):
        counter.feed(data[start : start + size])
    return counter.finish()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 65, 4096, 1 << 20])
def test_postgres_copy_rows_are_counted_per_table(size):
    assert count(postgres.RowCounter, PG_DUMP, size) == {
        'public.Weird "Name"': 3,
        "public.empty": 0,
        "My Schema.orders": 1000,
        "public.big": 2,
    }


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100, 1 << 20])
def test_mysql_insert_tuples_are_counted_per_table(size):
    assert count(mysql.RowCounter, MY_DUMP, size) == {"t": 6, "odd`name": 1}

"""The Go text/template subset (app.languages.gotemplate): output as Go and sprig produce it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.languages.gotemplate import (
    TemplateExecError,
    TemplateSyntaxError,
    compile_template,
    go_sprint,
)

BODY: dict[str, Any] = {
    "model": "resnet",
    "dataset": "imagenet",
    "n": 5,
    "f": 1.5,
    "whole": 2.0,
    "big": 1000000.0,
    "list": ["a", "b", "c"],
    "map": {"b": 1, "a": None},
    "flag": True,
    "off": False,
    "name": "John Smith",
    "sha": "2c065a9f31e8",
    "none": None,
    "empty": "",
    "numstr": "42",
    "items": [{"name": "x", "size": 1}, {"name": "y", "size": 3}],
    "html": "<a&b>",
}
DATA = {"Input": {"body": BODY, "header": {"X-Run": ["7"]}}}


def render(src: str, data: Any = DATA) -> str:
    return compile_template(src).render(data)


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        # fields, missing keys, nulls, printing
        ("{{ .Input.body.model }}", "resnet"),
        ("{{.Input.body.model}}-{{.Input.body.dataset}}", "resnet-imagenet"),
        ("{{ .Input.body.missing }}", "<no value>"),
        ("{{ .Input.body.missing.deeper }}", "<no value>"),
        ("{{ .Nope }}", "<no value>"),
        ("{{ .Input.body.none }}", "<no value>"),
        ("{{ .Input.body.n }}", "5"),
        ("{{ .Input.body.f }}", "1.5"),
        ("{{ .Input.body.whole }}", "2"),
        ("{{ .Input.body.big }}", "1e+06"),
        ("{{ .Input.body.flag }}", "true"),
        ("{{ .Input.body.list }}", "[a b c]"),
        ("{{ .Input.body.map }}", "map[a:<nil> b:1]"),
        ("{{ .Input.body.items }}", "[map[name:x size:1] map[name:y size:3]]"),
        ("{{ . }}", "map[Input:map[body:" + go_sprint(BODY) + " header:map[X-Run:[7]]]]"),
        ("{{ $.Input.body.model }}", "resnet"),
        ("plain text", "plain text"),
        ("", ""),
        # literals
        ('{{ "a\\tb" }}', "a\tb"),
        ("{{ `raw\\n` }}", "raw\\n"),
        ("{{ 3 }} {{ -2 }} {{ 1.0 }} {{ 0x10 }} {{ 1e3 }} {{ 'a' }}", "3 -2 1 16 1000 97"),
        ("{{ true }} {{ false }}", "true false"),
        # index
        ("{{ index .Input.body.list 1 }}", "b"),
        ('{{ index .Input.header "X-Run" 0 }}', "7"),
        ('{{ index .Input.body "model" }}', "resnet"),
        ('{{ index .Input.body "missing" }}', "<no value>"),
        ("{{ (index .Input.body.items 1).name }}", "y"),
        ("{{ index .Input.body.list 2 | upper }}", "C"),
        ("{{ slice .Input.body.list 1 }}", "[b c]"),
        ('{{ slice "abcdef" 1 3 }}', "bc"),
        # pipelines
        ("{{ .Input.body.model | upper }}", "RESNET"),
        ("{{ .Input.body.name | nospace | lower }}-", "johnsmith-"),
        ("{{ .Input.body.sha | substr 0 7 }}", "2c065a9"),
        ("{{ .Input.body.n }}-{{ .Input.body.sha | substr 0 7 }}", "5-2c065a9"),
        ('{{ "example-1" | title }}', "Example-1"),
        ('{{ "hello wORLD_x y" | title }}', "Hello WORLD_x Y"),
        ('{{ "example-1" | replace "-" "_" }}', "example_1"),
        # conditionals
        ("{{ if .Input.body.flag }}yes{{ else }}no{{ end }}", "yes"),
        ("{{ if .Input.body.off }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if .Input.body.missing }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if .Input.body.empty }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if .Input.body.list }}yes{{ end }}", "yes"),
        (
            '{{ if eq .Input.body.model "vgg" }}v{{ else if eq .Input.body.model "resnet" }}r'
            "{{ else }}o{{ end }}",
            "r",
        ),
        ("{{ if and .Input.body.flag .Input.body.n }}both{{ end }}", "both"),
        ("{{ if or .Input.body.off .Input.body.missing }}x{{ else }}neither{{ end }}", "neither"),
        ("{{ if not .Input.body.off }}not{{ end }}", "not"),
        ('{{ and 1 0 }} {{ and 1 2 }} {{ or 0 "" }} {{ or 0 "x" }}', "0 2  x"),
        ("{{ .Input.body.flag | and 1 }}", "true"),
        ("{{ with .Input.body.model }}{{ . }}{{ end }}", "resnet"),
        ("{{ with .Input.body.missing }}{{ . }}{{ else }}none{{ end }}", "none"),
        ("{{ with .Input.body.missing }}a{{ else with .Input.body.n }}{{ . }}{{ end }}", "5"),
        ("{{ if $m := .Input.body.model }}{{ $m }}{{ end }}", "resnet"),
        # comparisons
        ('{{ eq .Input.body.model "resnet" }}', "true"),
        ('{{ eq .Input.body.model "a" "resnet" }}', "true"),
        ('{{ ne .Input.body.model "resnet" }}', "false"),
        ("{{ eq .Input.body.n 5 }} {{ eq .Input.body.f 1.5 }}", "true true"),
        (
            "{{ lt .Input.body.n 10 }} {{ le 5 5 }} {{ gt 2 1 }} {{ ge 1 2 }}",
            "true true true false",
        ),
        ('{{ lt "a" "b" }}', "true"),
        ('{{ eq .Input.body.missing "x" }}', "false"),
        ('{{ len .Input.body.list }} {{ len .Input.body.map }} {{ len "héllo" }}', "3 2 6"),
        # range
        ("{{ range .Input.body.list }}{{ . }},{{ end }}", "a,b,c,"),
        ("{{ range $i, $e := .Input.body.list }}{{ $i }}={{ $e }} {{ end }}", "0=a 1=b 2=c "),
        ("{{ range $e := .Input.body.list }}{{ $e }}{{ end }}", "abc"),
        ("{{ range $k, $v := .Input.body.map }}{{ $k }}:{{ $v }} {{ end }}", "a:<no value> b:1 "),
        ("{{ range .Input.body.missing }}x{{ else }}empty{{ end }}", "empty"),
        ("{{ range .Input.body.items }}{{ .name }}{{ end }}", "xy"),
        ("{{ range 3 }}{{ . }}{{ end }}", "012"),
        (
            '{{ range .Input.body.list }}{{ if eq . "b" }}{{ continue }}{{ end }}{{ . }}{{ end }}',
            "ac",
        ),
        ('{{ range .Input.body.list }}{{ if eq . "b" }}{{ break }}{{ end }}{{ . }}{{ end }}', "a"),
        ("{{ range .Input.body.items }}{{ $.Input.body.model }}{{ end }}", "resnetresnet"),
        # variables
        ("{{ $x := .Input.body.model }}{{ $x }}", "resnet"),
        ("{{ $x := 1 }}{{ $x = 2 }}{{ $x }}", "2"),
        ("{{ $x := 1 }}{{ if true }}{{ $x = 3 }}{{ end }}{{ $x }}", "3"),
        # whitespace trimming and comments
        ("a  {{- .Input.body.model -}}  b", "aresnetb"),
        ("a\n  {{- .Input.body.model }}\n", "aresnet\n"),
        ("{{ .Input.body.model -}}\n\n  !", "resnet!"),
        ("x{{/* a comment */}}y", "xy"),
        ("x {{- /* trimmed */ -}} y", "xy"),
        ("{{ -3 }}", "-3"),
        # printf / print
        ('{{ printf "%s-%d" .Input.body.model .Input.body.n }}', "resnet-5"),
        (
            '{{ printf "%05.2f|%v|%q|%t|%x" .Input.body.f .Input.body.list "a" true 255 }}',
            '01.50|[a b c]|"a"|true|ff',
        ),
        ('{{ printf "%-4s|%4s|%+d|%%" "a" "b" 3 }}', "a   |   b|+3|%"),
        ('{{ printf "%d" }}', "%!d(MISSING)"),
        ('{{ printf "%d" "x" }}', "%!d(string=x)"),
        ('{{ printf "a" 1 }}', "a%!(EXTRA int=1)"),
        ('{{ printf "%v" .Input.body.missing }}', "<nil>"),
        ('{{ print 1 2 "a" "b" 3 }}', "1 2ab3"),
        ('{{ println "a" 1 }}', "a 1\n"),
        ('{{ html .Input.body.html }} {{ urlquery "a b&c" }}', "&lt;a&amp;b&gt; a+b%26c"),
        # sprig: strings
        ('{{ upper "abc" }} {{ lower "ABC" }}', "ABC abc"),
        ('{{ trim "  x  " }}|{{ trimAll "-" "--x--" }}', "x|x"),
        ('{{ trimPrefix "re" "resnet" }} {{ trimSuffix "net" "resnet" }}', "snet res"),
        (
            '{{ contains "sn" .Input.body.model }} {{ hasPrefix "res" .Input.body.model }}',
            "true true",
        ),
        ('{{ hasSuffix "x" .Input.body.model }}', "false"),
        ('{{ split "," "a,b" }} {{ (split "," "a,b")._1 }}', "map[_0:a _1:b] b"),
        ('{{ splitList "," "a,b" }}', "[a b]"),
        ('{{ join "-" .Input.body.list }}', "a-b-c"),
        (
            '{{ .Input.body.model | quote }} {{ squote "x" }} {{ quote "a\\"b" }}',
            '"resnet" \'x\' "a\\"b"',
        ),
        ('{{ cat "a" 1 nil "b" }}', "a 1 b"),
        ('{{ repeat 3 "ab" }}', "ababab"),
        ('{{ trunc 3 "abcdef" }} {{ trunc -2 "abcdef" }}', "abc ef"),
        ('{{ substr 2 100 "abcdef" }}', "cdef"),
        # sprig: defaults
        ('{{ .Input.body.missing | default "dflt" }}', "dflt"),
        ('{{ .Input.body.empty | default "dflt" }}', "dflt"),
        ('{{ .Input.body.model | default "dflt" }}', "resnet"),
        ('{{ default "d" }}', "d"),
        ("{{ empty .Input.body.empty }} {{ empty .Input.body.n }}", "true false"),
        ('{{ coalesce .Input.body.missing "" "c" }}', "c"),
        ('{{ ternary "y" "n" .Input.body.flag }} {{ .Input.body.off | ternary "y" "n" }}', "y n"),
        # sprig: encoding and conversion
        ('{{ b64enc "hello" }} {{ b64dec "aGVsbG8=" }}', "aGVsbG8= hello"),
        ("{{ .Input.body.map | toJson }}", '{"a":null,"b":1}'),
        ("{{ .Input.body.html | toJson }}", '"\\u003ca\\u0026b\\u003e"'),
        ("{{ .Input.body.html | toRawJson }}", '"<a&b>"'),
        ("{{ .Input.body.big | toJson }} {{ .Input.body.f | toJson }}", "1000000 1.5"),
        ("{{ toPrettyJson .Input.body.map }}", '{\n  "a": null,\n  "b": 1\n}'),
        ('{{ (fromJson "{\\"a\\":[1,2]}").a }}', "[1 2]"),
        ('{{ sha256sum "abc" | trunc 8 }}', "ba7816bf"),
        ("{{ .Input.body.n | toString }} {{ toString .Input.body.none }}", "5 <nil>"),
        (
            '{{ int "42" }} {{ int "5.0" }} {{ int "x" }} {{ int 3.9 }} {{ int64 "0x10" }}',
            "42 5 0 3 16",
        ),
        ('{{ float64 "1.5" }} {{ atoi "12" }} {{ atoi "1x" }}', "1.5 12 0"),
        ("{{ int .Input.body.numstr | add 1 }}", "43"),
        ("{{ add 1 2 3 }} {{ add1 1 }} {{ sub 5 2 }} {{ mul 2 3 4 }}", "6 2 3 24"),
        ("{{ div 7 2 }} {{ div -7 2 }} {{ mod 7 3 }} {{ max 1 5 2 }} {{ min 4 2 }}", "3 -3 1 5 2"),
        ('{{ list 1 "a" nil }} {{ dict "a" 1 "b" | toJson }}', '[1 a <nil>] {"a":1,"b":""}'),
        ('{{ hasKey .Input.body "model" }} {{ get .Input.body "model" }}', "true resnet"),
        # sprig: time (in a fixed zone: the machine's own zone does not matter)
        ('{{ dateInZone "2006-01-02T15:04:05Z07:00" 1700000000 "UTC" }}', "2023-11-14T22:13:20Z"),
        (
            '{{ dateInZone "Mon Jan _2 03:04:05 PM MST 2006 .000 002" 1700000000 "UTC" }}',
            "Tue Nov 14 10:13:20 PM UTC 2023 .000 318",
        ),
        (
            '{{ dateInZone "-07:00 Z0700 January Monday 06 1/2 3:4:5 pm" 0 "UTC" }}',
            "+00:00 Z January Thursday 70 1/1 12:0:0 am",
        ),
        ('{{ dateInZone "15:04 -0700" 0 "Asia/Kolkata" }}', "05:30 +0530"),
    ],
)
def test_render(src: str, expected: str) -> None:
    assert render(src) == expected


def test_time_values() -> None:
    when = datetime(2024, 3, 5, 7, 8, 9, 120000, tzinfo=UTC)
    data = {"t": when}
    assert render('{{ dateInZone "2006-01-02 15:04:05.999" .t "UTC" }}', data) == (
        "2024-03-05 07:08:09.12"
    )
    assert render("{{ unixEpoch .t }}", data) == str(int(when.timestamp()))
    assert render('{{ now | date "2006" }}', {}) == str(datetime.now().astimezone().year)
    assert render("{{ .t }}", data) == "2024-03-05 07:08:09.12 +0000 UTC"


def test_context_input() -> None:
    ctx = {"Input": {"id": "abc", "source": "webhook", "subject": "example-1", "type": "webhook"}}
    assert render("{{ .Input.subject | title }}", ctx) == "Example-1"
    assert render("{{ .Input.type }}/{{ .Input.source }}/{{ .Input.id }}", ctx) == (
        "webhook/webhook/abc"
    )


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("{{ .Input.body.none.x }}", "nil pointer evaluating interface {}.x"),
        ("{{ .Input.body.model.x }}", "can't evaluate field x in type string"),
        ("{{ upper .Input.body.n }}", "expected string; got int"),
        ("{{ upper .Input.body.missing }}", "invalid value; expected string"),
        ("{{ index .Input.body.list 5 }}", "index out of range: 5"),
        ("{{ index .Input.body.missing 0 }}", "index of untyped nil"),
        ('{{ eq .Input.body.n "5" }}', "incompatible types for comparison"),
        ("{{ eq .Input.body.list .Input.body.list }}", "non-comparable type"),
        ("{{ lt true false }}", "invalid type for comparison"),
        ("{{ len .Input.body.n }}", "len of type int"),
        ("{{ len .Input.body.missing }}", "len of nil pointer"),
        ('{{ range "abc" }}{{ end }}', "range can't iterate over abc"),
        ("{{ div 1 0 }}", "integer divide by zero"),
    ],
)
def test_execution_errors(src: str, message: str) -> None:
    t = compile_template(src)
    with pytest.raises(TemplateExecError, match=message.replace("(", r"\(").replace("{", r"\{")):
        t.render(DATA)


@pytest.mark.parametrize(
    ("src", "message", "line", "col"),
    [
        ("{{ no }}", 'function "no" not defined', 1, 4),
        ('ab\n {{ env "HOME" }}', 'function "env" is not supported', 2, 5),
        ("{{ toYaml . }}", 'function "toYaml" not defined', 1, 4),
        ('{{ regexMatch "a" "b" }}', "is not supported", 1, 4),
        ("{{ if true }}x", "unexpected EOF in {{if}}", 1, 4),
        ("{{ end }}", "unexpected {{end}}", 1, 4),
        ("{{ else }}", "unexpected {{else}}", 1, 4),
        ("{{ .x", "unclosed action", 1, 6),
        ('{{ "abc }}', "unterminated quoted string", 1, 4),
        ("{{ .Input | upper 1 }}", "wrong number of args for upper: want 1 got 2", 1, 13),
        ("{{ upper }}", "wrong number of args for upper: want 1 got 0", 1, 4),
        ("{{ .a .b }}", "can't give argument to non-function .a", 1, 4),
        ("{{ .a | .b }}", "can't give argument to non-function .b", 1, 9),
        ("{{ nil }}", "nil is not a command", 1, 4),
        ("{{ $y }}", "undefined variable", 1, 4),
        ("{{ $y = 1 }}", "undefined variable", 1, 4),
        ("{{ .x-y }}", "unrecognized character", 1, 6),
        ('{{ template "x" }}', "{{template}} is not supported", 1, 4),
        ('{{ define "x" }}{{ end }}', "{{define}} is not supported", 1, 4),
        ("{{ break }}", "{{break}} outside {{range}}", 1, 4),
        ("{{ }}", "missing value for command", 1, 4),
        ('{{ (upper "a" }}', "unclosed left paren", 1, 15),
        ("{{ 1x }}", "bad number syntax", 1, 4),
        ('{{ "a".b }}', "unexpected . after term", 1, 7),
        ("{{/* open", "unclosed comment", 1, 1),
    ],
)
def test_syntax_errors_have_positions(src: str, message: str, line: int, col: int) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        compile_template(src)
    assert message in info.value.message
    assert (info.value.line, info.value.col) == (line, col)
    assert isinstance(info.value, ValueError)


@given(st.text().filter(lambda s: "{{" not in s))
def test_text_without_actions_renders_verbatim(text: str) -> None:
    assert compile_template(text).render({}) == text


@given(st.text())
def test_dot_renders_strings_unchanged(value: str) -> None:
    assert compile_template("{{ . }}").render(value) == value
    assert compile_template("{{ .Input | toRawJson | fromJson }}").render({"Input": value}) == value

"""A strict reader of Prometheus' text exposition format (0.0.4), as node_exporter's textfile
collector takes it: what the metrics tests parse the hook's codo_release.prom with."""

import math
import re

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class FormatError(ValueError):
    pass


class Family:
    def __init__(self, name):
        self.name, self.help, self.type = name, None, None
        self.samples = {}  # frozenset of (label, value): value

    def value(self, **labels):
        return self.samples[frozenset(labels.items())]

    def labelled(self):
        return [dict(labels) for labels in self.samples]


def parse(text):
    """{family name: Family}; FormatError on anything the format or node_exporter would refuse:
    a missing HELP or TYPE, a family split or repeated, a duplicate sample, a timestamp, bad escapes."""
    if not text.endswith("\n"):
        raise FormatError("the text does not end with a line feed")
    families, order = {}, []
    for number, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {number}"
        if line.startswith("# "):
            _, keyword, rest = line.split(" ", 2) if line.count(" ") >= 2 else (None, None, "")
            if keyword in ("HELP", "TYPE"):
                name, _, value = rest.partition(" ")
                family = _family(families, order, name, where)
                if family.samples:
                    raise FormatError(f"{where}: {keyword} of {name} after its samples")
                attribute = keyword.lower()
                if getattr(family, attribute) is not None:
                    raise FormatError(f"{where}: a second {keyword} for {name}")
                if keyword == "TYPE" and value not in TYPES:
                    raise FormatError(f"{where}: unknown type {value!r}")
                setattr(family, attribute, value)
            continue
        if not line or line.startswith("#"):
            raise FormatError(f"{where}: an empty line or a comment the format has no use for")
        name, labels, rest = _sample(line, where)
        family = _family(families, order, name, where)
        key = frozenset(labels.items())
        if key in family.samples:
            raise FormatError(f"{where}: a second sample {name}{labels}")
        fields = rest.split(" ")
        if len(fields) != 1:
            raise FormatError(f"{where}: a timestamp or trailing text ({rest!r})")
        family.samples[key] = _number(fields[0], where)
    for family in families.values():
        if family.help is None or family.type is None:
            raise FormatError(f"{family.name} has no HELP or no TYPE line")
        if family.type == "counter" and not family.name.endswith("_total"):
            raise FormatError(f"counter {family.name} does not end in _total")
        if family.type == "counter" and any(v < 0 for v in family.samples.values()):
            raise FormatError(f"counter {family.name} is negative")
    return families


def _family(families, order, name, where):
    if not NAME.match(name):
        raise FormatError(f"{where}: {name!r} is not a metric name")
    if name in families:
        if order[-1] != name:
            raise FormatError(f"{where}: {name}'s lines are not together")
        return families[name]
    families[name] = Family(name)
    order.append(name)
    return families[name]


def _sample(line, where):
    match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
    if not match:
        raise FormatError(f"{where}: no metric name")
    name, position, labels = match.group(1), match.end(), {}
    if line[position : position + 1] == "{":
        position += 1
        while line[position] != "}":
            equals = line.index("=", position)
            label = line[position:equals]
            if not LABEL_NAME.match(label) or label in labels:
                raise FormatError(f"{where}: bad or repeated label name {label!r}")
            if line[equals + 1] != '"':
                raise FormatError(f"{where}: label {label}'s value is not quoted")
            value, position = _quoted(line, equals + 2, where)
            labels[label] = value
            if line[position] == ",":
                position += 1
            elif line[position] != "}":
                raise FormatError(f"{where}: {line[position]!r} after label {label}")
        position += 1
    if line[position : position + 1] != " ":
        raise FormatError(f"{where}: no space before the value")
    return name, labels, line[position + 1 :]


def _quoted(line, position, where):
    out = []
    while True:
        if position >= len(line):
            raise FormatError(f"{where}: a label value that does not end")
        char = line[position]
        if char == '"':
            return "".join(out), position + 1
        if char == "\\":
            escaped = line[position + 1 : position + 2]
            if escaped not in ESCAPES:
                raise FormatError(f"{where}: unknown escape \\{escaped}")
            out.append(ESCAPES[escaped])
            position += 2
            continue
        out.append(char)
        position += 1


def _number(text, where):
    try:
        value = float(text)
    except ValueError:
        raise FormatError(f"{where}: {text!r} is not a number")
    if math.isnan(value) and text != "NaN":
        raise FormatError(f"{where}: {text!r}")
    return value

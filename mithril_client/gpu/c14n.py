"""Canonical XML 1.1 (W3C REC xml-c14n11, 2008), inclusive, without comments, on the standard
library's expat — for the documents NVIDIA's RIMs are. Two node sets are supported, the two an
enveloped XML signature needs: the whole document minus one element (the Signature), and one
element with its descendants (SignedInfo). Anything outside that subset is refused rather than
canonicalized differently: a DOCTYPE (so no entities either), processing instructions or
comments outside the document element, and xml:* attributes on the ancestors of an apex
(C14N 1.1's inheritance rules for them are not implemented).

The tree keeps prefixes and namespace declarations as written (expat without namespace
processing), which C14N needs and ElementTree drops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.parsers import expat

from ..errors import BadInput

XML_NS = "http://www.w3.org/XML/1998/namespace"
MAX_DEPTH = 64


@dataclass(eq=False)
class Element:
    qname: str
    attrs: list[tuple[str, str]]  # as written, xmlns declarations included
    parent: Element | None = None
    children: list = field(default_factory=list)  # Element | str (text) | tuple (PI: target, data)

    @property
    def prefix(self) -> str:
        return self.qname.split(":", 1)[0] if ":" in self.qname else ""

    @property
    def local(self) -> str:
        return self.qname.split(":", 1)[-1]

    def declarations(self) -> dict[str, str]:
        """prefix ("" for the default namespace) -> URI declared on this element."""
        out = {}
        for name, value in self.attrs:
            if name == "xmlns":
                out[""] = value
            elif name.startswith("xmlns:"):
                out[name[6:]] = value
        return out

    def in_scope(self) -> dict[str, str]:
        chain, node = [], self
        while node is not None:
            chain.append(node)
            node = node.parent
        scope: dict[str, str] = {}
        for node in reversed(chain):
            scope.update(node.declarations())
        return scope

    def namespace(self) -> str:
        return self.in_scope().get(self.prefix, "")

    def elements(self) -> list[Element]:
        return [c for c in self.children if isinstance(c, Element)]

    def text(self) -> str:
        return "".join(c for c in self.children if isinstance(c, str))

    def attr(self, name: str) -> str | None:
        return next((v for k, v in self.attrs if k == name), None)


def parse(data: bytes, where: str) -> Element:
    """The document element of `data`; BadInput on malformed XML or anything outside the subset."""
    parser = expat.ParserCreate()  # no namespace processing: prefixes are kept
    root: list[Element] = []
    stack: list[Element] = []

    def start(name, attrs):
        if len(stack) >= MAX_DEPTH:
            raise BadInput(where, f"XML nested deeper than {MAX_DEPTH} elements")
        el = Element(name, list(zip(attrs[0::2], attrs[1::2])), stack[-1] if stack else None)
        if stack:
            stack[-1].children.append(el)
        elif root:
            raise BadInput(where, "more than one document element")
        else:
            root.append(el)
        stack.append(el)

    def end(name):
        stack.pop()

    def chars(data):
        if stack:
            node = stack[-1]
            if node.children and isinstance(node.children[-1], str):
                node.children[-1] += data
            else:
                node.children.append(data)
        elif data.strip():
            raise BadInput(where, "text outside the document element")

    def pi(target, data):
        if not stack:
            raise BadInput(where, f"processing instruction <?{target}?> outside the document element is not supported")
        stack[-1].children.append((target, data))

    def doctype(*_):
        raise BadInput(where, "a DOCTYPE is not accepted (no DTDs, no entities)")

    def comment(_):
        if not stack:
            raise BadInput(where, "a comment outside the document element is not supported")

    parser.buffer_text = True
    parser.ordered_attributes = True
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler, parser.ProcessingInstructionHandler = chars, pi
    parser.StartDoctypeDeclHandler, parser.CommentHandler = doctype, comment
    parser.EntityDeclHandler = lambda *a: doctype()
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise BadInput(where, f"not well-formed XML: {expat.ErrorString(e.code)} "
                              f"(line {e.lineno}, column {e.offset})") from None
    if not root:
        raise BadInput(where, "no document element")
    return root[0]


def _attr_value(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
            .replace("\t", "&#x9;").replace("\n", "&#xA;").replace("\r", "&#xD;"))


def _text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#xD;")


def canonicalize(apex: Element, exclude: Element | None = None) -> bytes:
    """C14N 1.1 of `apex` and its descendants, without `exclude` and its descendants."""
    node = apex.parent
    while node is not None:
        if any(k.startswith("xml:") for k, _ in node.attrs):
            raise BadInput("xml", f"xml:* attributes on <{node.qname}>, an ancestor of <{apex.qname}>, "
                                  "are not supported")
        node = node.parent
    out: list[str] = []
    # the namespaces "rendered" so far: for the apex, what is in scope at its parent counts as
    # not rendered (inclusive C14N renders every in-scope namespace on the apex), except that an
    # empty default namespace needs no declaration.
    _emit(apex, {"": ""}, apex.parent.in_scope() if apex.parent else {}, exclude, out)
    return "".join(out).encode("utf-8")


def _emit(el: Element, rendered: dict[str, str], inherited: dict[str, str], exclude, out: list[str]) -> None:
    scope = dict(inherited)
    scope.update(el.declarations())
    ns_out = []
    for prefix, uri in sorted(scope.items()):
        if prefix == "xml":
            continue
        if rendered.get(prefix, None if prefix else "") != uri:
            if prefix and not uri:
                raise BadInput("xml", f"<{el.qname}> undeclares prefix {prefix!r} (XML 1.1 only)")
            ns_out.append((prefix, uri))
    attrs = []
    for name, value in el.attrs:
        if name == "xmlns" or name.startswith("xmlns:"):
            continue
        if ":" in name:
            prefix, local = name.split(":", 1)
            uri = XML_NS if prefix == "xml" else scope.get(prefix)
            if uri is None:
                raise BadInput("xml", f"<{el.qname}>: attribute {name}: prefix {prefix!r} is not declared")
        else:
            uri, local = "", name
        attrs.append((uri, local, name, value))
    if el.prefix and el.prefix not in scope:
        raise BadInput("xml", f"<{el.qname}>: prefix {el.prefix!r} is not declared")
    out.append("<" + el.qname)
    for prefix, uri in ns_out:
        out.append(f' xmlns:{prefix}="{_attr_value(uri)}"' if prefix else f' xmlns="{_attr_value(uri)}"')
    for _uri, _local, name, value in sorted(attrs, key=lambda a: (a[0], a[1])):
        out.append(f' {name}="{_attr_value(value)}"')
    out.append(">")
    now_rendered = dict(rendered)
    now_rendered.update(ns_out)
    for child in el.children:
        if isinstance(child, Element):
            if child is not exclude:
                _emit(child, now_rendered, scope, exclude, out)
        elif isinstance(child, str):
            out.append(_text(child))
        else:
            target, data = child
            out.append(f"<?{target}{' ' + data if data else ''}?>")
    out.append(f"</{el.qname}>")

"""The fee catalog (手数料の科目) and the payment brands, as validated config.

Two TOML files (reference: docs/fees.md):

* ``brands.toml``: the payment methods (cash, credit, emoney, qr), every brand with
  the names a terminal reports for it and its rules (can it be voided at the
  terminal, what an incomplete transaction 処理未了 means), and the settlement fee
  rates per fee category with the contract's rounding;
* ``fees.toml``: the revenue accounts (歳入科目), the fee items with their price and
  account, and each item's counter flow (窓口フロー): the laminated per-item
  flowchart next to the terminal, as data the counter console shows.

Everything is checked at load, including the references between the two files and
to the site's services, so a typo stops start-up with the file, the key and a hint
instead of surfacing at the counter.  Money is ``int`` yen; rates are ``Decimal``.

Typical use::

    catalog = load_catalog("config/fees.toml", "config/brands.toml",
                           services=site_services(loaded.site))
    lines = catalog.price([("juminhyo", 2), ("inkan-shomei", 1)])   # 900 yen
    methods = catalog.allowed_methods(["juminhyo", "inkan-shomei"])
    steps = catalog.flow("juminhyo", "credit")
"""

from __future__ import annotations

import difflib
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bus.configfile import ConfigError, digest, parse_toml
from bus.topics import ID_PATTERN

if TYPE_CHECKING:
    from central.config import Site

#: Yen are integers, always.
Yen = int

#: Fee item codes, brand ids and flow names: lower-case ASCII, digits, ``-`` and ``_``.
CODE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
#: 款-項-目 (and optionally 節), two digits each: "13-02-01".
ACCOUNT_CODE_PATTERN = r"^[0-9]{2}(-[0-9]{2}){1,3}$"

Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
ServiceId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
AccountCode = Annotated[str, StringConstraints(pattern=ACCOUNT_CODE_PATTERN)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=60)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
#: An ordered list of steps; an empty list is a mistake, never "no steps".
Steps = Annotated[tuple[Text, ...], Field(min_length=1, max_length=40)]
PositiveYen = Annotated[int, Field(strict=True, gt=0, le=10_000_000)]

MethodId = Literal["cash", "credit", "emoney", "qr"]
#: What the visitor gets as proof of payment: 領収書, 利用控え (the terminal's slip), or both.
ReceiptKind = Literal["receipt", "slip", "both"]
VoidRule = Literal["same_day", "last_only", "days", "never"]
UnknownRule = Literal["settles_on_next_touch", "investigate", "booked_paid", "not_paid", "ask_terminal"]
Rounding = Literal["floor", "round_half_up", "ceil"]

_ROUNDING = {"floor": ROUND_FLOOR, "round_half_up": ROUND_HALF_UP, "ceil": ROUND_CEILING}


class FeeError(ValueError):
    """A charge that the catalog cannot price or pay: bad quantity, method not allowed..."""


class UnknownCode(KeyError):
    """A fee item, brand or method id that is not in the catalog (with a did-you-mean)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _decimal_string(value: Any) -> Any:
    # A TOML float (0.022) is binary and inexact; money rates are written as strings.
    if not isinstance(value, str):
        raise PydanticCustomError(
            "decimal_string", 'write the rate as a decimal string, e.g. "0.022" (floats are not exact)'
        )
    return value


Rate = Annotated[Decimal, BeforeValidator(_decimal_string), Field(ge=0, lt=1, allow_inf_nan=False)]


# ============================================================== brands.toml


class PaymentMethod(Strict):
    """A payment method (支払方法).  The ids are fixed: the counter's flow differs per method."""

    id: MethodId
    name_ja: Name
    name_en: Name


class Brand(Strict):
    """A payment brand (VISA, 交通系IC, PayPay ...) and the rules that change what staff do."""

    id: Code
    name_ja: Name
    name_en: Name
    method: MethodId
    #: What a terminal reports as the card name; matched ignoring case, width and spaces.
    terminal_names: tuple[Name, ...] = Field(min_length=1)
    #: The settlement fee category ([settlement.rates] key) used by reconciliation.
    fee_category: Code
    #: Void (取消) at the terminal: "same_day"; "last_only" (the terminal's last
    #: transaction, card not used since); "days" (within ``void_days``); "never"
    #: (an out-of-band refund 返金 instead).
    void: VoidRule
    void_days: int | None = Field(default=None, strict=True, ge=1, le=400)
    #: What an incomplete transaction (処理未了) means; see docs/fees.md §3.
    unknown_outcome: UnknownRule
    #: "investigate": an investigation must be asked for within this many days.
    investigate_days: int | None = Field(default=None, strict=True, ge=1, le=400)

    @model_validator(mode="after")
    def _rule_parameters(self) -> Brand:
        if self.method == "cash":
            raise ValueError("method 'cash' has no brands")
        if (self.void == "days") != (self.void_days is not None):
            raise ValueError("'void_days' is needed with void = \"days\", and only then")
        if (self.unknown_outcome == "investigate") != (self.investigate_days is not None):
            raise ValueError("'investigate_days' is needed with unknown_outcome = \"investigate\", and only then")
        return self

    @property
    def voidable(self) -> bool:
        """Whether the terminal can ever void a payment of this brand."""
        return self.void != "never"

    @property
    def void_note_ja(self) -> str:
        """The void rule in one sentence, for the counter console."""
        name = self.name_ja
        if self.void == "same_day":
            return f"{name}：端末で取消できるのは当日の取引だけです。翌日以降は返金で対応します。"
        if self.void == "last_only":
            return (
                f"{name}：端末で取消できるのは、この端末の直前の取引で、その後そのカードを使っていない場合だけです。"
                "それ以外は返金で対応します。"
            )
        if self.void == "days":
            return f"{name}：取引から{self.void_days}日以内なら、支払った端末で取消できます。過ぎた場合は返金で対応します。"
        return f"{name}：端末では取消できません。返金（返金伝票）で対応します。"

    @property
    def unknown_note_ja(self) -> str:
        """What 処理未了 means for this brand, for the counter console."""
        name = self.name_ja
        record = "決済をやり直さず、窓口画面で「処理未了」として記録し、出納担当に報告してください。"
        if self.unknown_outcome == "settles_on_next_touch":
            return f"{name}の処理未了：そのカードが次にタッチされたときに確定します。{record}"
        if self.unknown_outcome == "investigate":
            return (
                f"{name}の処理未了：確定まで数か月かかることがあります。"
                f"{self.investigate_days}日以内に決済代行会社へ調査を依頼します。{record}"
            )
        if self.unknown_outcome == "booked_paid":
            return f"{name}の処理未了：いったん支払済として扱われ、後日取り消されます。{record}"
        if self.unknown_outcome == "not_paid":
            return (
                f"{name}の処理未了：支払われていない扱いになります。"
                "窓口画面で「処理未了」として記録し、別の方法でお支払いいただいてください。"
            )
        return f"{name}：結果が分からないときは、端末の直前の取引の照会で確かめます。決済をやり直さないでください。"


class Settlement(Strict):
    """Settlement fee (決済手数料) rates per fee category, and the contract's rounding."""

    rounding: Rounding
    rates: dict[Code, Rate] = Field(min_length=1)

    def fee(self, gross: Yen, category: str) -> Yen:
        """The expected settlement fee in yen for ``gross`` yen of ``category``, rounded
        by the contract's rule.  Raises :class:`UnknownCode` for an unknown category."""
        if type(gross) is not int or gross < 0:
            raise FeeError(f"gross must be a whole number of yen ≥ 0, not {gross!r}")
        if category not in self.rates:
            raise UnknownCode(_unknown("fee category", category, self.rates))
        exact = Decimal(gross) * self.rates[category]
        return int(exact.quantize(Decimal(1), rounding=_ROUNDING[self.rounding]))


class BrandsFile(Strict):
    methods: tuple[PaymentMethod, ...] = Field(min_length=1)
    brands: tuple[Brand, ...] = ()
    settlement: Settlement


# ============================================================== fees.toml


class Account(Strict):
    """A revenue account (歳入科目): 款 › 項 › 目, e.g. 使用料及び手数料 › 手数料 › 総務手数料."""

    code: AccountCode
    kan: Name
    kou: Name
    moku: Name

    @property
    def path_ja(self) -> str:
        return f"{self.kan} › {self.kou} › {self.moku}"


class Documents(Strict):
    """What the proof of payment is called, by ``receipt`` kind."""

    receipt: Name = "領収書"
    slip: Name = "利用控え（お客様控え）"


class FlowPart(Strict):
    """A counter flow, or part of one: a ``[flows.<name>]`` template, or the flow keys
    of an item.  ``uses`` names the template it starts from."""

    uses: Code | None = None
    #: The applicant's form; "" clears an inherited one (an item with no form).
    form: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] | None = None
    prepare: Steps | None = None
    steps: dict[str, Steps] = {}
    receipt: dict[str, ReceiptKind] = {}
    hand_over: Annotated[tuple[Text, ...], Field(min_length=1, max_length=10)] | None = None
    keep: Text | None = None
    cancel: dict[str, Steps] = {}
    refund: Steps | None = None


class RawItem(FlowPart):
    """A ``[[items]]`` entry as written."""

    code: Code
    name_ja: Name
    name_en: Name
    unit_price: PositiveYen
    unit_ja: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=12)]
    account: Name
    account_code: AccountCode
    service: ServiceId
    methods: tuple[str, ...] = Field(min_length=1)
    max_quantity: int = Field(strict=True, ge=1, le=100_000)


class FeesFile(Strict):
    accounts: tuple[Account, ...] = Field(min_length=1)
    documents: Documents = Documents()
    flows: dict[Code, FlowPart] = {}
    items: tuple[RawItem, ...] = Field(min_length=1)


# ============================================================== the loaded catalog


class Flow(Strict):
    """An item's resolved counter flow (its template chain merged)."""

    form: str | None
    #: What staff prepare before taking payment (check the form, issue the certificate ...).
    prepare: tuple[str, ...]
    #: The ordered steps per allowed payment method.
    steps: dict[MethodId, tuple[str, ...]]
    #: Proof of payment per allowed method.
    receipt: dict[MethodId, ReceiptKind]
    #: What the visitor receives besides the proof of payment (証明書, 鑑札 ...).
    hand_over: tuple[str, ...]
    #: Where the application and the merchant copy are kept.
    keep: str
    #: How to cancel, per allowed method, and per brand where a brand differs.
    cancel: dict[str, tuple[str, ...]]
    #: The out-of-band refund (返金) when the terminal cannot void; () for cash-only items.
    refund: tuple[str, ...]


class FeeItem(Strict):
    """A fee item (科目) with its price, account and counter flow."""

    code: Code
    name_ja: str
    name_en: str
    unit_price: Yen
    unit_ja: str
    account: str
    account_code: str
    service: str
    methods: tuple[MethodId, ...]
    max_quantity: int
    flow: Flow


class PricedLine(Strict):
    """One line of a charge: ``quantity`` × ``unit_price`` = ``amount`` yen."""

    code: str
    name_ja: str
    name_en: str
    quantity: int
    unit_price: Yen
    amount: Yen
    account: str
    account_code: str
    unit_ja: str


class FeeCatalog(Strict):
    """The loaded, cross-checked catalog.  Build it with :func:`load_catalog`."""

    items: dict[str, FeeItem]
    brands: dict[str, Brand]
    methods: dict[str, PaymentMethod]
    settlement: Settlement
    accounts: dict[str, Account]
    documents: Documents
    #: First 16 hex of SHA-256 over both files, for a device's info.
    config_hash: str
    fees_file: str
    brands_file: str

    # lookups -----------------------------------------------------------------
    def item(self, code: str) -> FeeItem:
        """The item ``code``.  Raises :class:`UnknownCode` (a KeyError) with a did-you-mean."""
        try:
            return self.items[code]
        except (KeyError, TypeError):
            names = {item.name_ja: c for c, item in self.items.items()}
            raise UnknownCode(_unknown("fee item", code, self.items, aliases=names)) from None

    def brand(self, brand_id: str) -> Brand:
        """The brand ``brand_id``.  Raises :class:`UnknownCode` with a did-you-mean."""
        try:
            return self.brands[brand_id]
        except (KeyError, TypeError):
            raise UnknownCode(_unknown("brand", brand_id, self.brands)) from None

    def brands_for(self, method: str) -> list[Brand]:
        """The brands of ``method`` in file order (none for cash)."""
        self._method(method)
        return [b for b in self.brands.values() if b.method == method]

    def brand_for_terminal_name(self, name: str) -> Brand | None:
        """The brand a terminal means by ``name`` ("VISA", "Suica", "楽天Edy" ...),
        ignoring case, full/half width, spaces and ``-``/``_``/``.``/``・``; None if unknown."""
        if not isinstance(name, str):
            return None
        key = _terminal_key(name)
        for brand in self.brands.values():
            if any(_terminal_key(n) == key for n in brand.terminal_names):
                return brand
        return None

    def account_of(self, code: str) -> Account:
        """The revenue account (歳入科目) of item ``code``."""
        return self.accounts[self.item(code).account_code]

    # charging ----------------------------------------------------------------
    def price(self, lines: Iterable[tuple[str, int]]) -> list[PricedLine]:
        """Price a charge: ``[(code, quantity), ...]`` → one :class:`PricedLine` each.

        Quantities must be ``int`` (not bool, float or str) in 1..the item's
        ``max_quantity``; each code at most once.  Raises :class:`FeeError`, or
        :class:`UnknownCode` for an unknown code."""
        if isinstance(lines, (str, bytes)) or not isinstance(lines, Iterable):
            raise FeeError(f"a charge is a list of (code, quantity) lines, not {lines!r}")
        lines = list(lines)
        if not lines:
            raise FeeError("a charge needs at least one (code, quantity) line")
        priced: list[PricedLine] = []
        seen: set[str] = set()
        for line in lines:
            if not isinstance(line, (tuple, list)) or len(line) != 2:
                raise FeeError(f"a line is a (code, quantity) pair, not {line!r}")
            code, quantity = line
            item = self.item(code)
            if code in seen:
                raise FeeError(f"{code}: listed twice; give one line with the total quantity")
            seen.add(code)
            if type(quantity) is not int:
                raise FeeError(f"{code}: quantity must be a whole number, not {quantity!r}")
            if not 1 <= quantity <= item.max_quantity:
                raise FeeError(f"{code}: quantity {quantity} is outside 1..{item.max_quantity}")
            priced.append(
                PricedLine(
                    code=item.code,
                    name_ja=item.name_ja,
                    name_en=item.name_en,
                    quantity=quantity,
                    unit_price=item.unit_price,
                    amount=item.unit_price * quantity,
                    account=item.account,
                    account_code=item.account_code,
                    unit_ja=item.unit_ja,
                )
            )
        return priced

    def allowed_methods(self, codes: Iterable[str]) -> set[str]:
        """The payment methods every item of a charge allows (the intersection).
        Raises :class:`FeeError` for no codes, :class:`UnknownCode` for an unknown one."""
        codes = [codes] if isinstance(codes, str) else list(codes)
        if not codes:
            raise FeeError("a charge needs at least one item")
        allowed = set(self.methods)
        for code in codes:
            allowed &= set(self.item(code).methods)
        return allowed

    # counter flows -------------------------------------------------------------
    def proof_of_payment(self, code: str, method: str) -> list[str]:
        """What the visitor gets as proof of paying ``code`` by ``method``: 領収書,
        利用控え or both (names from ``[documents]``)."""
        item = self._allowed(code, method)
        kind = item.flow.receipt[method]
        docs = self.documents
        return {"receipt": [docs.receipt], "slip": [docs.slip], "both": [docs.slip, docs.receipt]}[kind]

    def hand_over(self, code: str, method: str) -> list[str]:
        """Everything the visitor leaves with: the item's things, then the proof of payment."""
        item = self._allowed(code, method)
        return _unique([*item.flow.hand_over, *self.proof_of_payment(code, method)])

    def flow(self, code: str, method: str) -> list[str]:
        """The full step list staff see for ``code`` paid by ``method``: what to prepare,
        the payment steps, what to hand over, and where to keep the papers (last).
        Raises :class:`FeeError` if the item does not allow ``method``."""
        item = self._allowed(code, method)
        f = item.flow
        return [*f.prepare, *f.steps[method], _hand_over_step(self.hand_over(code, method)), f.keep]

    def charge_flow(self, codes: Sequence[str], method: str) -> list[str]:
        """:meth:`flow` for a charge of several items, with repeated steps said once."""
        codes = list(codes)
        if not codes:
            raise FeeError("a charge needs at least one item")
        items = [self._allowed(code, method) for code in codes]
        prepare = _unique(s for i in items for s in i.flow.prepare)
        steps = _unique(s for i in items for s in i.flow.steps[method])
        docs = _unique(d for c in codes for d in self.proof_of_payment(c, method))
        things = _unique([*(t for i in items for t in i.flow.hand_over), *sorted(docs, key=self._doc_order)])
        keep = _unique(i.flow.keep for i in items)
        return [*prepare, *steps, _hand_over_step(things), *keep]

    def cancel_flow(self, code: str, method: str, brand: str | None = None) -> list[str]:
        """How to cancel a payment of ``code`` by ``method`` (and ``brand``): the brand's
        void rule first, then getting the things back, then the steps.  A brand that can
        never be voided (楽天Edy, nanaco) gets the refund (返金) steps instead."""
        item = self._allowed(code, method)
        f = item.flow
        notes: list[str] = []
        steps = f.cancel[method]
        if brand is not None:
            b = self.brand(brand)
            if b.method != method:
                raise FeeError(f"brand {b.id} is paid by {b.method}, not {method}")
            notes.append(b.void_note_ja)
            if b.id in f.cancel:
                steps = f.cancel[b.id]
            elif not b.voidable:
                steps = f.refund
        back = f"{'・'.join(self.hand_over(code, method))}を返していただく"
        return [*notes, back, *steps]

    def refund_flow(self, code: str, method: str) -> list[str]:
        """The out-of-band refund (返金) of a cashless payment the terminal cannot void."""
        item = self._allowed(code, method)
        if not item.flow.refund:
            raise FeeError(f"{code}: no refund flow (paid by {method})")
        back = f"{'・'.join(self.hand_over(code, method))}を返していただく"
        return [back, *item.flow.refund]

    # helpers -----------------------------------------------------------------
    def _doc_order(self, doc: str) -> int:
        return 0 if doc == self.documents.slip else 1

    def _method(self, method: str) -> PaymentMethod:
        # A FeeError (ValueError), not a KeyError: callers map KeyError to "no such item".
        try:
            return self.methods[method]
        except (KeyError, TypeError):
            raise FeeError(_unknown("payment method", method, self.methods)) from None

    def _allowed(self, code: str, method: str) -> FeeItem:
        item = self.item(code)
        self._method(method)
        if method not in item.methods:
            raise FeeError(f"{code} cannot be paid by {method} (allowed: {', '.join(item.methods)})")
        return item

    def check_services(self, services: set[str]) -> None:
        """Check every item's ``service`` against the site's service ids.
        Raises :class:`ConfigError` naming the fees file and the keys."""
        problems = _Problems(self.fees_file)
        for index, item in enumerate(self.items.values()):
            if item.service not in services:
                problems.add(
                    f"items.{index}.service",
                    f"{item.code}: unknown service {item.service!r}{_hint(item.service, services)}"
                    f" (the site has: {', '.join(sorted(services)) or 'none'})",
                )
        problems.raise_if_any()


def site_services(site: Site) -> set[str]:
    """The service ids of a loaded site (``central.config.Site``), for ``services=``."""
    return {s.id for s in site.services}


# ============================================================== loading


def load_catalog(
    fees_path: str | Path,
    brands_path: str | Path,
    *,
    services: set[str] | None = None,
) -> FeeCatalog:
    """Load and cross-check ``fees.toml`` and ``brands.toml``.

    ``services``: the site's service ids (:func:`site_services`); when given, every
    item's ``service`` must be one of them.  Raises :class:`ConfigError` with the file,
    the key path and a hint; all problems of a file are listed at once."""
    fees_path, brands_path = Path(fees_path), Path(brands_path)
    brands_file, brands_raw = _read(brands_path, BrandsFile)
    methods, brands = _check_brands(brands_file, str(brands_path))
    fees_file, fees_raw = _read(fees_path, FeesFile)
    items, accounts = _check_fees(fees_file, methods, brands, str(fees_path))
    catalog = FeeCatalog(
        items=items,
        brands=brands,
        methods=methods,
        settlement=brands_file.settlement,
        accounts=accounts,
        documents=fees_file.documents,
        config_hash=digest(fees_raw + b"\0" + brands_raw),
        fees_file=str(fees_path),
        brands_file=str(brands_path),
    )
    if services is not None:
        catalog.check_services(set(services))
    return catalog


_LIST_IDS = {"items": "code", "brands": "id", "methods": "id", "accounts": "code"}


def _read(path: Path, model: type[BaseModel]) -> tuple[Any, bytes]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return parse_toml(raw, model, source=str(path)), raw
    except ConfigError as exc:
        raise ConfigError(_name_entries(str(exc), raw)) from None


def _name_entries(message: str, raw: bytes) -> str:
    """Add the entry's code to pydantic's ``items.3.unit_price: ...`` lines, so the
    reader need not count ``[[items]]`` tables."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return message
    out = []
    for line in message.splitlines():
        # explain() cannot see through dict[str, FlowPart]: hint misspelt flow keys here.
        flow_key = re.match(r"^  flows\.[^.]+\.[^.:]+: unknown key '([^']+)'$", line)
        if flow_key:
            line += _hint(flow_key[1], FlowPart.model_fields)
        match = re.match(r"^  (items|brands|methods|accounts)\.(\d+)[.:]", line)
        if match:
            entries = data.get(match[1])
            index = int(match[2])
            if isinstance(entries, list) and index < len(entries) and isinstance(entries[index], dict):
                ident = entries[index].get(_LIST_IDS[match[1]])
                if isinstance(ident, str):
                    line += f" [{match[1][:-1]} {ident!r}]"
        out.append(line)
    return "\n".join(out)


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f"  {key}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(f"{self.source}: {len(self.lines)} problem(s):\n" + "\n".join(self.lines))


def _check_brands(file: BrandsFile, source: str) -> tuple[dict[str, PaymentMethod], dict[str, Brand]]:
    problems = _Problems(source)
    methods: dict[str, PaymentMethod] = {}
    for i, method in enumerate(file.methods):
        if method.id in methods:
            problems.add(f"methods.{i}.id", f"method {method.id!r} is listed twice")
        methods[method.id] = method
    brands: dict[str, Brand] = {}
    owner: dict[str, str] = {}
    for i, brand in enumerate(file.brands):
        key = f"brands.{i}"
        if brand.id in brands:
            problems.add(f"{key}.id", f"brand id {brand.id!r} is used twice")
        brands[brand.id] = brand
        if brand.method not in methods:
            problems.add(f"{key}.method", f"{brand.id}: method {brand.method!r} is not in [[methods]]")
        if brand.fee_category not in file.settlement.rates:
            problems.add(
                f"{key}.fee_category",
                f"{brand.id}: no rate for fee category {brand.fee_category!r} in [settlement.rates]"
                + _hint(brand.fee_category, file.settlement.rates),
            )
        for name in brand.terminal_names:
            norm = _terminal_key(name)
            if norm in owner and owner[norm] != brand.id:
                problems.add(
                    f"{key}.terminal_names",
                    f"{brand.id}: terminal name {name!r} is also a terminal name of brand {owner[norm]!r}"
                    " (names must tell brands apart)",
                )
            owner.setdefault(norm, brand.id)
    for method in methods:
        if method != "cash" and not any(b.method == method for b in file.brands):
            problems.add("brands", f"method {method!r} has no brands (add its brands or remove the method)")
    problems.raise_if_any()
    return methods, brands


_FLOW_FIELDS = ("form", "prepare", "hand_over", "keep", "refund")
_FLOW_MAPS = ("steps", "receipt", "cancel")


def _check_fees(
    file: FeesFile,
    methods: Mapping[str, PaymentMethod],
    brands: Mapping[str, Brand],
    source: str,
) -> tuple[dict[str, FeeItem], dict[str, Account]]:
    problems = _Problems(source)

    accounts: dict[str, Account] = {}
    for i, account in enumerate(file.accounts):
        if account.code in accounts:
            problems.add(f"accounts.{i}.code", f"account code {account.code!r} is used twice")
        accounts[account.code] = account

    def check_keys(key: str, who: str, part: FlowPart, allowed: Iterable[str] | None) -> None:
        """Keys of steps/receipt (methods) and cancel (methods or brands).  ``allowed``:
        the item's methods (None for a template, which may cover any method)."""
        allowed = None if allowed is None else set(allowed)
        for field in _FLOW_MAPS:
            for name in getattr(part, field):
                where = f"{key}.{field}.{name}"
                if name in methods:
                    method = name
                elif field == "cancel" and name in brands:
                    method = brands[name].method
                else:
                    known = list(methods) + (list(brands) if field == "cancel" else [])
                    kind = "method or brand" if field == "cancel" else "method"
                    problems.add(where, f"{who}unknown {kind} {name!r}{_hint(name, known)}")
                    continue
                if allowed is not None and method not in allowed:
                    problems.add(
                        where,
                        f"{who}{field} for {name!r}, but the item's methods are [{', '.join(sorted(allowed))}]"
                        f" (remove them, or add {method!r} to methods)",
                    )

    # templates: known references, no cycles
    for name, part in file.flows.items():
        check_keys(f"flows.{name}", "", part, None)
        if part.uses is not None and part.uses not in file.flows:
            problems.add(f"flows.{name}.uses", f"unknown flow {part.uses!r}{_hint(part.uses, file.flows)}")
    for name in file.flows:
        chain, current = [name], file.flows[name].uses
        while current is not None and current in file.flows:
            if current in chain:
                if current == name:
                    problems.add(f"flows.{name}.uses", "flows' 'uses' form a cycle: " + " → ".join([*chain, current]))
                break
            chain.append(current)
            current = file.flows[current].uses

    items: dict[str, FeeItem] = {}
    first: dict[str, int] = {}
    for i, raw in enumerate(file.items):
        key, who = f"items.{i}", f"{raw.code}: "
        if raw.code in first:
            problems.add(f"{key}.code", f"code {raw.code!r} is used twice (first at items.{first[raw.code]})")
            continue
        first[raw.code] = i
        bad = len(problems.lines)

        account = accounts.get(raw.account_code)
        if account is None:
            problems.add(
                f"{key}.account_code",
                f"{who}unknown account code {raw.account_code!r} (not in [[accounts]]){_hint(raw.account_code, accounts)}",
            )
        elif account.moku != raw.account:
            problems.add(
                f"{key}.account",
                f"{who}account {raw.account!r} does not match account_code {raw.account_code} ({account.moku})",
            )

        allowed: list[str] = []
        for j, method in enumerate(raw.methods):
            if method not in methods:
                problems.add(f"{key}.methods.{j}", f"{who}unknown method {method!r}{_hint(method, methods)}")
            elif method in allowed:
                problems.add(f"{key}.methods.{j}", f"{who}method {method!r} is listed twice")
            else:
                allowed.append(method)
        check_keys(key, who, raw, allowed)

        if raw.uses is not None and raw.uses not in file.flows:
            problems.add(f"{key}.uses", f"{who}unknown flow {raw.uses!r}{_hint(raw.uses, file.flows)}")
            continue
        if len(problems.lines) > bad:
            continue
        merged = _merge(raw, file.flows)

        for field, what in (
            ("prepare", "what staff prepare"),
            ("hand_over", "what the visitor receives"),
            ("keep", "where the application is kept"),
        ):
            if not merged[field]:
                problems.add(key, f"{who}no '{field}' ({what}): set it on the item or on the flow it uses")
        for method in allowed:
            if method not in merged["steps"]:
                problems.add(f"{key}.steps", f"{who}method {method!r} is allowed but has no steps")
            if method not in merged["receipt"]:
                problems.add(f"{key}.receipt", f"{who}method {method!r} is allowed but has no receipt rule")
            if method not in merged["cancel"]:
                problems.add(f"{key}.cancel", f"{who}method {method!r} is allowed but has no cancel steps")
        if any(m != "cash" for m in allowed) and not merged["refund"]:
            problems.add(key, f"{who}no 'refund' steps (返金), needed for cashless methods")
        if len(problems.lines) > bad:
            continue

        cashless = any(m != "cash" for m in allowed)
        keep_method = set(allowed).__contains__
        items[raw.code] = FeeItem(
            code=raw.code,
            name_ja=raw.name_ja,
            name_en=raw.name_en,
            unit_price=raw.unit_price,
            unit_ja=raw.unit_ja,
            account=raw.account,
            account_code=raw.account_code,
            service=raw.service,
            methods=tuple(allowed),
            max_quantity=raw.max_quantity,
            flow=Flow(
                form=merged["form"] or None,
                prepare=merged["prepare"],
                steps={m: s for m, s in merged["steps"].items() if keep_method(m)},
                receipt={m: r for m, r in merged["receipt"].items() if keep_method(m)},
                hand_over=merged["hand_over"],
                keep=merged["keep"],
                cancel={
                    k: s
                    for k, s in merged["cancel"].items()
                    if keep_method(k) or (k in brands and keep_method(brands[k].method))
                },
                refund=(merged["refund"] or ()) if cashless else (),
            ),
        )
    problems.raise_if_any()
    return items, accounts


def _merge(item: FlowPart, flows: Mapping[str, FlowPart]) -> dict[str, Any]:
    """The item's flow: its template chain from the root, each part overriding."""
    chain: list[FlowPart] = [item]
    seen: set[str] = set()
    current = item.uses
    while current is not None and current in flows and current not in seen:  # a cycle is reported elsewhere
        seen.add(current)
        chain.append(flows[current])
        current = flows[current].uses
    merged: dict[str, Any] = {name: None for name in _FLOW_FIELDS} | {name: {} for name in _FLOW_MAPS}
    for part in reversed(chain):
        for name in _FLOW_FIELDS:
            value = getattr(part, name)
            if value is not None:
                merged[name] = value
        for name in _FLOW_MAPS:
            merged[name] = {**merged[name], **getattr(part, name)}
    return merged


# ============================================================== small helpers


def _terminal_key(name: str) -> str:
    return re.sub(r"[\s\-_.・]", "", unicodedata.normalize("NFKC", name)).casefold()


def _hint(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(kind: str, word: object, candidates: Iterable[str], *, aliases: Mapping[str, str] | None = None) -> str:
    if aliases and isinstance(word, str) and word in aliases:
        return f"unknown {kind} {word!r} (did you mean {aliases[word]!r}?)"
    hint = _hint(str(word), candidates)
    if not hint and aliases and isinstance(word, str):
        close = difflib.get_close_matches(word, list(aliases), n=1, cutoff=0.6)
        hint = f" (did you mean {aliases[close[0]]!r}?)" if close else ""
    return f"unknown {kind} {word!r}{hint}"


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _hand_over_step(things: Sequence[str]) -> str:
    return f"{'・'.join(things)}をお渡しする"


__all__ = [
    "Account",
    "Brand",
    "ConfigError",
    "FeeCatalog",
    "FeeError",
    "FeeItem",
    "Flow",
    "PaymentMethod",
    "PricedLine",
    "Settlement",
    "UnknownCode",
    "Yen",
    "load_catalog",
    "site_services",
]

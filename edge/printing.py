"""Receipts and slips: a print spool on the payment journal.

* A job is journaled when the payment is, keyed ``<payment>:<kind>`` — the
  same receipt is queued once, however often the event is handled.
* The printer's status is read before every job (paper end, cover open,
  cutter error, offline — drivers/printer); a job that cannot print waits and
  is printed when the printer recovers.  Staff are told why.
* A job is marked ``printing`` before its bytes leave.  If the daemon dies
  then, nobody knows whether it is on paper: the job becomes ``uncertain`` and
  is never printed again on its own; staff re-print it if the visitor has
  none, and a re-print says 再発行.

Printing runs in one worker thread; the journal is only touched on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from drivers.printer import PrinterError, PrinterNotReady, receipts
from edge.crashpoints import crashpoint
from edge.journal import Journal, Payment, PrintJob

logger = logging.getLogger(__name__)

#: How often a waiting job is tried again while the printer is not ready.
RETRY_S = 3.0

#: What staff are told when a receipt waits, by the printer's health reason.
NOT_READY = {
    "paper_end": ("プリンタの用紙がありません。補充すると領収書を印刷します", "Printer out of paper: refill it and the receipt prints"),
    "cover_open": ("プリンタのカバーが開いています。閉じると印刷します", "Printer cover open: close it to print"),
    "cutter_error": ("プリンタのカッターエラーです。紙詰まりを確認してください", "Printer cutter error: check for a paper jam"),
    "offline": ("プリンタがオフラインです", "Printer offline"),
    "no_reply": ("プリンタが応答しません。電源とケーブルを確認してください", "Printer not answering: check power and cable"),
    "": ("プリンタが使えません。復旧すると印刷します", "Printer not ready: it prints when it recovers"),
}


class PrintSpool:
    def __init__(self, journal: Journal, printer: Any, *, device: str, header: tuple[str, str],
                 counter_name: tuple[str, str], notify=None, zone=None) -> None:
        self.journal = journal
        self.zone = zone or ZoneInfo("Asia/Tokyo")
        #: Tells staff (the counter display) why a receipt waits.
        self.notify = notify or (lambda ja, en: None)
        self._told: str | None = None
        self.printer = printer
        self.device = device
        self.header = header
        self.counter_name = counter_name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"printer-{device}")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        #: The last status read: (status, reason, message) for health.
        self._health: tuple[str, str | None, str | None] = ("ok", None, None)
        self.printed = 0

    # ------------------------------------------------------------ life
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        uncertain = self.journal.recover_print_jobs()
        if uncertain:
            logger.error("%s: %d print job(s) were printing when the daemon stopped: not re-printed on their own "
                         "(staff re-print if needed; it will say 再発行)", self.device, uncertain)
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"print-spool-{self.device}")

    def close(self) -> None:
        """Stop the spool (the daemon closes the printer after it)."""
        if self._task is not None:
            self._task.cancel()
        # Wait for a job in the printer's hands: its bytes are on their way.
        self._pool.shutdown(wait=True, cancel_futures=True)

    def health(self) -> tuple[str, str | None, str | None]:
        return self._health

    # ------------------------------------------------------------ jobs
    def submit(self, p: Payment, *, reprint: bool) -> None:
        """Queue what ``p`` needs on paper (its charge says receipt / slip / both)."""
        kinds = self._kinds(p)
        for kind in kinds:
            if reprint:
                n = len([j for j in self.journal.print_jobs_of(p.payment_id) if j.reprint]) + 1
                key = f"{p.payment_id}:{kind}:reprint-{n}"
            else:
                key = f"{p.payment_id}:{kind}"
            if self.journal.add_print_job(key, p.payment_id, kind, reprint=reprint):
                logger.info("%s: print job %s queued", self.device, key)
        if self._wake is not None:
            self._wake.set()

    @staticmethod
    def _kinds(p: Payment) -> list[str]:
        if p.kind == "void":
            return ["void"]
        if p.kind == "refund":
            return ["refund"]
        wanted = p.charge.get("receipt", "receipt")
        if wanted == "none":
            return []
        if wanted == "both":
            return ["receipt", "slip"]
        if p.method == "cash" and wanted == "slip":
            return ["receipt"]  # a cash payment has no terminal slip to copy
        return [wanted]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = self.journal.print_jobs("queued")
            if not jobs:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 10.0)
                except TimeoutError:
                    pass
                # Refresh the health now and then even when idle (paper near end).
                await self._read_status(loop)
                continue
            job = jobs[0]
            if not await self._print(loop, job):
                await asyncio.sleep(RETRY_S)

    async def _read_status(self, loop) -> None:
        try:
            status = await loop.run_in_executor(self._pool, self.printer.status)
            self._health = status.health()
        except PrinterError as exc:
            self._health = ("error", "no_reply", str(exc)[:200])

    async def _print(self, loop, job: PrintJob) -> bool:
        p = self.journal.get(job.payment_id)
        if p is None:
            self.journal.set_print_state(job.id, "failed", error="payment not in the journal")
            return True
        try:
            doc = self.document(p, job.kind, reprint=job.reprint)
        except (ValueError, KeyError) as exc:
            logger.error("%s: cannot lay out %s: %s", self.device, job.job_key, exc)
            self.journal.set_print_state(job.id, "failed", error=str(exc)[:200])
            return True
        # Status first: not ready means nothing is sent, the job waits.
        try:
            status = await loop.run_in_executor(self._pool, self.printer.status)
        except PrinterError as exc:
            self._health = ("error", "no_reply", str(exc)[:200])
            return False
        self._health = status.health()
        if not status.printable:
            logger.warning("%s: printer not ready (%s): %s waits", self.device, self._health[1], job.job_key)
            if self._told != self._health[1]:
                self._told = self._health[1]
                ja, en = NOT_READY.get(self._health[1] or "", NOT_READY[""])
                self.notify(ja, en)
            return False
        if self._told is not None:
            self._told = None
            self.notify("プリンタが復旧しました。印刷します", "Printer ready again: printing")
        # Marked before the bytes leave: a crash from here on must not print it twice.
        self.journal.set_print_state(job.id, "printing", attempt=True)
        crashpoint("print.before_send")
        try:
            await loop.run_in_executor(self._pool, self.printer.print, doc)
        except PrinterNotReady as exc:
            # Checked again inside print(): nothing was sent.
            self.journal.set_print_state(job.id, "queued", error=str(exc)[:200])
            return False
        except PrinterError as exc:
            # Some bytes may be on paper: do not print it again by ourselves.
            logger.error("%s: printing %s failed: %s (staff may re-print)", self.device, job.job_key, exc)
            self.journal.set_print_state(job.id, "uncertain", error=str(exc)[:200])
            self._health = ("error", "print_failed", str(exc)[:200])
            return True
        self.journal.set_print_state(job.id, "done")
        self.printed += 1
        logger.info("%s: printed %s", self.device, job.job_key)
        return True

    # ------------------------------------------------------------ layout
    def document(self, p: Payment, kind: str, *, reprint: bool):
        """The receipt/slip of ``p`` as a printer document."""
        c, r = p.charge, p.result
        zone = self.zone
        txn_at = datetime.fromisoformat(r["txn_at"]).astimezone(zone) if r.get("txn_at") else datetime.now(zone)
        method_ja = c.get("method_ja") or {"cash": "現金", "credit": "クレジット", "emoney": "電子マネー", "qr": "QRコード決済"}[p.method]
        method_en = c.get("method_en") or p.method
        data = receipts.ReceiptData(
            kind="slip" if kind in ("slip", "void") else "refund" if kind == "refund" else "receipt",
            office=self.header[0], counter=self.counter_name[0],
            issued_at=txn_at.replace(tzinfo=None),
            receipt_no=r.get("receipt_no") or p.payment_id[:8].upper(),
            lines=tuple(receipts.ReceiptLine(name_ja=line["name_ja"], quantity=line["quantity"],
                                             unit_price=line["unit_price"], amount=line["amount"])
                        for line in c.get("lines", [])),
            total=p.amount, method_ja=method_ja, method_en=method_en, brand=r.get("card_name") or "",
            tendered=r.get("tendered"), change=r.get("change"),
            slip_no=r.get("slip_no") or "", approval_no=r.get("approval_no") or "", terminal_id=r.get("terminal_id") or "",
            transaction={"sale": "売上", "void": "取消", "refund": "返品"}[p.kind],
            # A re-print of a voided sale says so too.
            reprint=reprint, void=p.kind == "void" or p.state == "voided",
        )
        return receipts.receipt(data)

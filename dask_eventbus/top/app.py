"""The terminal app: five views over the model, redrawn a few times a second."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, Static, TabbedContent, TabPane

from . import views
from .ingest import Ingest
from .model import TopModel

REFRESH_SECONDS = 0.5
VIEWS = ("clusters", "computations", "workers", "failures", "log")
TITLES = {
    "clusters": "1 Clusters",
    "computations": "2 Computations",
    "workers": "3 Workers",
    "failures": "4 Failures",
    "log": "5 Log",
}
COLUMNS = {
    "clusters": views.CLUSTER_COLUMNS,
    "computations": views.COMPUTATION_COLUMNS,
    "workers": views.WORKER_COLUMNS,
    "failures": views.FAILURE_COLUMNS,
    "log": views.LOG_COLUMNS,
}

HELP = """\
Keys
  1-5, Tab        Clusters, Computations, Workers, Failures, Log
  ↑ ↓  j k        move;  PgUp PgDn  g G  page, top, end
  Enter           drill in: a cluster's computations; a computation's
                  prefixes; a worker; a failure's traceback and dependents
  /               filter the rows (Enter keeps it, Esc clears)
  Esc             back: clear the filter and the chosen cluster
  space           pause / resume the replay or the live stream
  n               step: the next second of the recording while paused
  + -             replay faster / slower
  ?               this help;  q  quit
"""


class Detail(ModalScreen[None]):
    """A drill-in: text over the view, closed with Esc, Enter or q."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "dismiss", "close"),
        Binding("j", "scroll('down')", show=False),
        Binding("k", "scroll('up')", show=False),
    ]
    DEFAULT_CSS = """
    Detail { align: center middle; }
    Detail > VerticalScroll {
        width: 100%; height: 100%; max-width: 120; border: round $accent;
        background: $surface; padding: 0 1;
    }
    """

    def __init__(self, title: str, body: str | Text) -> None:
        super().__init__()
        self._title = title
        self._body = body

    def compose(self) -> ComposeResult:
        scroll = VerticalScroll(Static(self._body, markup=False))
        scroll.border_title = self._title
        scroll.border_subtitle = "Esc to close"
        yield scroll

    def action_scroll(self, where: str) -> None:
        scroll = self.query_one(VerticalScroll)
        scroll.scroll_down() if where == "down" else scroll.scroll_up()


class TopApp(App[None]):
    """``dask-eventbus top``: every cluster on the bus, live or replayed."""

    TITLE = "dask-eventbus top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #status { height: 1; background: $boost; padding: 0 1; }
    TabbedContent { height: 1fr; }
    TabPane { padding: 0; }
    DataTable { height: 1fr; }
    #computations-table { height: 1fr; min-height: 4; }
    #prefixes { height: auto; max-height: 50%; padding: 0 1; border-top: solid $accent; }
    /* Always laid out (height 0 when closed) so that it takes focus at once. */
    #filter { height: 0; border: none; padding: 0 1; }
    #filter.shown { height: 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("1", "view('clusters')", "clusters", show=False),
        Binding("2", "view('computations')", "comps", show=False),
        Binding("3", "view('workers')", "workers", show=False),
        Binding("4", "view('failures')", "failures", show=False),
        Binding("5", "view('log')", "log", show=False),
        Binding("tab", "cycle(1)", "next view", priority=True),
        Binding("shift+tab", "cycle(-1)", show=False, priority=True),
        Binding("j", "move(1)", show=False),
        Binding("k", "move(-1)", show=False),
        Binding("g", "move(-1000000)", show=False),
        Binding("G", "move(1000000)", show=False),
        Binding("slash", "filter", "filter"),
        Binding("escape", "clear", "clear", show=False),
        Binding("space", "pause", "pause"),
        Binding("n", "step", "step"),
        Binding("plus,equals_sign", "faster", "faster", show=False),
        Binding("minus", "slower", "slower", show=False),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(
        self,
        model: TopModel,
        ingest: Ingest | None = None,
        *,
        describe: str = "",
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        super().__init__()
        self.model = model
        self.ingest = ingest
        self.describe = describe
        self.refresh_seconds = refresh_seconds
        self.cluster: str | None = None
        self.needle = ""
        self.refreshes = 0

    # ---- layout

    def compose(self) -> ComposeResult:
        # The main screen's widgets are looked up there, not on whichever
        # screen is on top (a drill-in), hence _main().
        yield Static("", id="status", markup=False)
        with TabbedContent(initial="clusters"):
            for name in VIEWS:
                with TabPane(TITLES[name], id=name):
                    table: DataTable[Any] = DataTable(
                        id=f"{name}-table", cursor_type="row", zebra_stripes=False
                    )
                    yield table
                    if name == "computations":
                        yield Static("", id="prefixes", markup=False)
        yield Input(placeholder="filter rows (Enter keeps, Esc clears)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        for name in VIEWS:
            table = self.table(name)
            table.add_columns(*COLUMNS[name])
        if self.ingest is not None:
            self.ingest.start()
        self.refresh_view()
        self.set_interval(self.refresh_seconds, self.refresh_view)

    def on_unmount(self) -> None:
        if self.ingest is not None:
            self.ingest.stop()

    def table(self, name: str | None = None) -> DataTable[Any]:
        return self._main().query_one(f"#{name or self.current}-table", DataTable)

    @property
    def current(self) -> str:
        return self._main().query_one(TabbedContent).active or "clusters"

    def _main(self) -> Screen[Any]:
        return self.screen_stack[0]

    # ---- drawing

    def refresh_view(self) -> None:
        """Redraw the status line and the view on show from the model."""
        self.refreshes += 1
        name = self.current
        model = self.model
        with model.lock:
            now = model.now()
            if name == "clusters":
                rows = views.clusters(model, now)
            elif name == "computations":
                rows = views.computations(model, now, self.cluster)
            elif name == "workers":
                rows = views.workers(model, self.cluster)
            elif name == "failures":
                rows = views.failures(model, self.cluster)
            else:
                rows = views.log(model, self.cluster)
            status = self.status_line(now)
        if self.needle:
            rows = [row for row in rows if views.matches(row[1], self.needle)]
        self._main().query_one("#status", Static).update(status)
        self.fill(self.table(name), rows)
        if name == "computations":
            self.show_prefixes()

    def status_line(self, now: float) -> Text:
        model = self.model
        text = Text()
        sources = len(model.sources)
        text.append(f"{sources} cluster{'s' if sources != 1 else ''}", "bold")
        text.append(f" · {model.applied:,} events")
        if model.latest is not None:
            text.append(f" · {views.clock(now)} UTC")
        ingest = self.ingest
        if ingest is not None:
            if ingest.error is not None:
                text.append(f" · input failed: {ingest.error}"[:80], "bold red")
            elif ingest.paused:
                text.append(" · PAUSED", "bold yellow")
            elif ingest.ended:
                text.append(" · end of input")
            elif not model.live:
                text.append(f" · x{ingest.speed:g}" if ingest.speed else " · replay")
            else:
                text.append(" · live")
        if self.cluster is not None:
            text.append(f" · only {views.short_source(self.cluster)}", "bold")
        if self.needle:
            text.append(f" · /{self.needle}", "bold")
        skipped = sum(model.reader.skipped.values())
        if skipped:
            text.append(f" · {skipped} skipped", "red")
        return text

    def fill(self, table: DataTable[Any], rows: list[views.Row]) -> None:
        """Replace the table's rows, keeping the cursor on the same row where it still is."""
        chosen = self.chosen_key(table)
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if chosen is not None:
            try:
                index = table.get_row_index(chosen)
            except Exception:
                return
            table.move_cursor(row=index, animate=False)

    @staticmethod
    def chosen_key(table: DataTable[Any]) -> str | None:
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:
            return None
        return key.value

    def show_prefixes(self) -> None:
        panel = self._main().query_one("#prefixes", Static)
        key = self.chosen_key(self.table("computations"))
        with self.model.lock:
            c = views.find_computation(self.model, key) if key else None
            text = views.prefix_bars(c, self.model.now()) if c else Text("")
        panel.update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "computations-table":
            self.show_prefixes()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_view()
        self.table().focus()

    # ---- keys

    def action_view(self, name: str) -> None:
        self._main().query_one(TabbedContent).active = name
        self.refresh_view()
        self.table().focus()

    def action_cycle(self, step: int) -> None:
        if isinstance(self.screen, Detail):
            return
        index = VIEWS.index(self.current)
        self.action_view(VIEWS[(index + step) % len(VIEWS)])

    def action_move(self, step: int) -> None:
        table = self.table()
        if table.row_count:
            row = min(max(table.cursor_row + step, 0), table.row_count - 1)
            table.move_cursor(row=row, animate=False)

    def action_filter(self) -> None:
        box = self._main().query_one("#filter", Input)
        box.add_class("shown")
        box.value = self.needle
        # At once, not after the next refresh: keys typed straight after
        # the slash go to the box, not to the table.
        self.screen.set_focus(box)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.needle = event.value.strip().lower()
        self.refresh_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.remove_class("shown")
        self.table().focus()

    def action_clear(self) -> None:
        box = self._main().query_one("#filter", Input)
        box.remove_class("shown")
        box.value = ""
        self.needle = ""
        self.cluster = None
        self.refresh_view()
        self.table().focus()

    def action_pause(self) -> None:
        if self.ingest is not None:
            self.ingest.toggle()
            self.refresh_view()

    def action_step(self) -> None:
        if self.ingest is not None:
            self.ingest.step()

    def action_faster(self) -> None:
        if self.ingest is not None and not self.model.live:
            self.ingest.faster()
            self.refresh_view()

    def action_slower(self) -> None:
        if self.ingest is not None and not self.model.live:
            self.ingest.slower()
            self.refresh_view()

    def action_help(self) -> None:
        reading = f"Reading {self.describe}\n\n" if self.describe else ""
        self.push_screen(Detail("keys", reading + HELP))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key is None:
            return
        name = self.current
        model = self.model
        if name == "clusters":
            self.cluster = key
            self.action_view("computations")
            return
        with model.lock:
            now = model.now()
            detail: tuple[str, str | Text] | None = None
            if name == "computations":
                c = views.find_computation(model, key)
                if c is not None:
                    detail = (f"computation #{c.number}", views.prefix_bars(c, now, width=32))
            elif name == "workers":
                found = views.find_worker(model, key)
                if found is not None:
                    detail = ("worker", views.worker_detail(*found))
            elif name == "failures":
                failed = views.find_failure(model, key)
                if failed is not None:
                    detail = (f"failure of {failed[1].key}", views.failure_detail(*failed))
            else:
                line = views.find_log(model, key)
                if line is not None:
                    detail = (line.topic, views.log_message(line))
        if detail is not None:
            self.push_screen(Detail(*detail))

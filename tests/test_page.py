"""The HTML study page (`render --format html`, `demo --picture html`) as a learner's browser shows it:
Debian's chromium, headless, driven through its DevTools protocol over a pipe (no websocket, no
download), at a 1400 px window and narrower. A page that scrolls sideways, a pane or table whose
content is cut off, or any console message of level error (a CSP violation, a script error) fails.

The sessions: those in tests/data/ (recorded by `nstrace demo --record` in `nstrace lab` guests on
5.10, 6.1, 6.12 and 7.2, with their kernel paths), this kernel's scenarios and a demo recorded here,
and a big one recorded here.
"""

import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from nshelpers import NSTRACE

CHROMIUM = "/usr/bin/chromium"
DATA = Path(__file__).resolve().parent / "data"
# recorded by `nstrace demo --record` in `nstrace lab` guests, with their kernel paths
LAB_SESSIONS = sorted(DATA.glob("lab-*.jsonl"))
CLONE_61 = DATA / "lab-6.1-demo-clone.jsonl"

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium package")


class Chromium:
    """Headless chromium driven by its DevTools protocol over --remote-debugging-pipe: JSON messages
    ended by a NUL byte, written to its fd 3, read from its fd 4."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             "--hide-scrollbars", "--remote-debugging-pipe")

    def __init__(self, profile):
        to_child, self._to = os.pipe()
        self._from, from_child = os.pipe()

        def fds():  # the pipe's ends where chromium looks for them (os.pipe's fds are not inherited)
            reads, writes = os.dup(to_child), os.dup(from_child)  # neither is 3 or 4: those are taken
            os.dup2(reads, 3)
            os.dup2(writes, 4)
        self.proc = subprocess.Popen([CHROMIUM, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def _message(self, timeout):
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from], [], [], timeout)
            if not ready:
                raise TimeoutError(f"chromium said nothing for {timeout} s")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed its DevTools pipe")
            self._buffer += chunk
        text, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(text)

    def call(self, method, session=False, timeout=60, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(self._message(max(deadline - time.monotonic(), 0.01)))

    def open(self, url, width=1400, height=900):
        """Load url afresh (by way of about:blank: the same URL again would be a reload, which
        restores the state the last visit left, such as opened <details>)."""
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        for where in ("about:blank", url):
            self.call("Page.navigate", session=True, url=where)
            self.wait_for("Page.loadEventFired")

    def evaluate(self, expression):
        done = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in done:
            raise RuntimeError(done["exceptionDetails"])
        return done["result"].get("value")

    def errors(self):
        """Every console message of level error so far: script errors, CSP violations, failed loads."""
        self.evaluate("0")  # a round trip: the events of what already ran have arrived
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(params["exceptionDetails"].get("exception", {}).get("description")
                           or params["exceptionDetails"].get("text"))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append(params["entry"]["text"])
        return out

    def requests(self):
        """The URLs the page asked for, beyond itself."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path, width, height):
        import base64
        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        Path(path).write_bytes(base64.b64decode(shot["data"]))

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except (EOFError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to)
        os.close(self._from)


# What overflows: the page sideways; any element whose content is wider than its box (cut off
# where its overflow is hidden, spilling over its neighbours where it is visible); any element or
# SVG text outside the window or outside its SVG. With every <details> opened first, so that what
# a learner expands is held to the same. One pane may scroll: a graph too wide to read at the
# page's width (GRAPH_FIT_PX), marked so (#graph .wide), listed apart.
OVERFLOW = r"""
(() => {
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  const scrolls = [...document.querySelectorAll("#graph .wide")];
  const out = [];
  const name = el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
      (typeof el.className === "string" && el.className ? "." + el.className.trim().split(/\s+/).join(".") : "") +
      " " + JSON.stringify((el.textContent || "").trim().slice(0, 60));
  const page = document.scrollingElement;
  if (page.scrollWidth > page.clientWidth)
    out.push(`page: ${page.scrollWidth} px wide in a ${page.clientWidth} px window`);
  const right = document.documentElement.clientWidth;
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("svg")) {
      if (el.tagName.toLowerCase() !== "text") continue;
      const box = el.getBoundingClientRect(), svg = el.ownerSVGElement.getBoundingClientRect();
      if (box.width && (box.left < svg.left - 1 || box.right > svg.right + 1 || box.top < svg.top - 1 ||
                        box.bottom > svg.bottom + 1))
        out.push(`svg text outside its picture: ${name(el)}`);
      continue;
    }
    if (scrolls.some(pane => pane.contains(el))) continue;
    const box = el.getBoundingClientRect();
    if (!box.width) continue;  // not shown
    if (el.clientWidth && el.scrollWidth > el.clientWidth + 1)
      out.push(`${name(el)}: content ${el.scrollWidth} px in a ${el.clientWidth} px box` +
               ` (overflow ${getComputedStyle(el).overflowX})`);
    if (box.right > right + 1 || box.left < -1)
      out.push(`${name(el)}: from ${Math.round(box.left)} to ${Math.round(box.right)} px, the window is ${right}`);
  }
  return out;
})()
"""
# The elements that scroll sideways by design, each with how much wider its content is
SCROLLING = """[...document.querySelectorAll("#graph .wide")].map(p => [p.scrollWidth, p.clientWidth,
                                                                   getComputedStyle(p).overflowX])"""


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="nstrace-chromium-")
    chromium = Chromium(profile)
    yield chromium
    chromium.close()
    shutil.rmtree(profile)


def show(browser, page, width=1400):
    """Open page at width; return (errors, overflows, requests beyond the page itself)."""
    browser.events.clear()
    browser.open(page.as_uri(), width=width)
    errors = browser.errors()
    requests = [url for url in browser.requests() if url != page.as_uri()]
    return errors, browser.evaluate(OVERFLOW), requests


def render(session, out, env=None):
    done = subprocess.run([str(NSTRACE), "render", str(session), "--format", "html", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return out


# --- the harness sees what it must ------------------------------------------------------------

@needs_chromium
def test_the_harness_sees_errors_csp_violations_and_overflow(browser, tmp_path):
    csp = "default-src 'none'; style-src 'sha256-AAAA'; script-src 'sha256-AAAA'"
    broken = tmp_path / "broken.html"
    broken.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{csp}">'
                      "<style>p{color:red}</style></head><body><p>x</p></body></html>")
    errors, _, _ = show(browser, broken)
    assert any("Content Security Policy" in e for e in errors), errors
    script = tmp_path / "script.html"
    script.write_text("<!DOCTYPE html><html><body><script>noSuchFunction();</script></body></html>")
    errors, _, _ = show(browser, script)
    assert any("noSuchFunction" in e for e in errors), errors
    wide = tmp_path / "wide.html"
    wide.write_text("<!DOCTYPE html><html><body><table><tr><td>" + "x" * 400 + "</td></tr></table>"
                    '<div style="overflow:hidden;width:100px"><span style="white-space:nowrap">' + "y" * 80 +
                    "</span></div>"
                    '<svg width="50" height="20"><text x="40" y="15">cut off</text></svg></body></html>')
    _, overflows, _ = show(browser, wide)
    assert any(o.startswith("page:") for o in overflows), overflows
    assert any("overflow hidden" in o for o in overflows), overflows
    assert any("svg text outside" in o for o in overflows), overflows


# --- the pages ----------------------------------------------------------------------------------

# The ops' row cells, all shown at every width: narrower windows wrap them, never hide one
CELLS = "[...document.querySelectorAll('#operations tbody > tr:first-child > td')]"


def reads_well(browser, page, records):
    """The page at 1400 px: no error, nothing fetched, nothing overflowing, its script run, a row and
    a timeline mark per operation; and at 800 and 400 px still nothing overflowing and no cell of
    an operation's row hidden. Returns what it found at 1400 px of what scrolls by design."""
    errors, overflows, requests = show(browser, page)
    assert errors == [] and requests == [], (errors, requests)
    scrolling = browser.evaluate(SCROLLING)
    assert overflows == [], overflows
    assert browser.evaluate("document.body.dataset.ready") == "1"  # the script ran to its end
    counts = browser.evaluate("[document.querySelectorAll('#operations tbody').length, "
                              "document.querySelectorAll('#timeline rect.mark').length]")
    assert counts == [records, records], counts
    ticks = browser.evaluate("[...document.querySelectorAll('#timeline text.axis')].map(t => t.textContent)")
    assert len(ticks) >= 3 and all(re.fullmatch(r"0|\+\d+(\.\d+)? (s|ms|\u00b5s)", t) for t in ticks), ticks
    for width in (800, 400):
        errors, overflows, _ = show(browser, page, width)
        assert errors == [] and overflows == [], (width, errors, overflows)
        hidden = browser.evaluate(f"{CELLS}.filter(td => !td.getBoundingClientRect().width).length")
        assert hidden == 0, (width, hidden)
    return scrolling


@needs_chromium
@pytest.mark.parametrize("session", LAB_SESSIONS, ids=lambda p: p.stem)
def test_a_lab_session_with_kernel_paths_reads_well_at_1400_px(browser, tmp_path, session):
    from nstrace.record.layout import OPS
    from nstrace.session import reader
    records = reader.load(session).records
    page = render(session, tmp_path / "page.html")
    assert reads_well(browser, page, len(records)) == []
    browser.open(page.as_uri())
    legend = browser.evaluate("[...document.querySelectorAll('#timeline ul.legend li')].map(li => li.textContent)")
    assert legend == [*OPS.values(), "failed call"]
    # every kernel path open (a demo's few operations), each step a row, the observed ones green
    steps = browser.evaluate("""[document.querySelectorAll('details.path:not([open])').length,
        document.querySelectorAll('.steps .step').length, document.querySelectorAll('.steps .observed').length,
        getComputedStyle(document.querySelector('.steps .observed .status')).color]""")
    assert steps[0] == 0 and steps[1] > steps[2] > len(records) and steps[3] == "rgb(26, 127, 55)", steps
    # what a demo saw from inside, where it recorded it (the older sessions did not): a section of its own
    inside = bool((reader.load(session).end or {}).get("seen_inside"))
    assert (browser.evaluate("document.getElementById('inside')") is not None) == inside


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A real session of 900 operations by 600 processes: util-linux unshare in a loop."""
    where = tmp_path_factory.mktemp("big")
    path = where / "big.jsonl"
    loop = "for i in $(seq 300); do unshare --uts --ipc true; unshare --fork --pid true; done"
    done = subprocess.run([str(NSTRACE), "watch", "--record", str(path), "-o", "/dev/null", "--", "sh", "-c", loop],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return path


@needs_chromium
def test_a_big_session_reads_well_its_wide_graph_scrolling_alone(browser, big, tmp_path):
    from nstrace.session import reader
    from nstrace.view import page as pagemod
    records = reader.load(big).records
    assert len(records) == 900
    page = render(big, tmp_path / "big.html")
    scrolling = reads_well(browser, page, len(records))
    # 600 processes side by side: dot's graph is far wider than the page, and scrolls in its pane
    [(content, box, overflow)] = scrolling
    assert content > pagemod.GRAPH_FIT_PX > box and overflow == "auto", scrolling
    browser.open(page.as_uri())
    lanes = browser.evaluate("[...document.querySelectorAll('#timeline text.lane')].map(t => t.textContent)")
    assert lanes == ["unshare (600 processes)"], lanes  # a lane per command past LANES_MAX processes
    # the kernel paths start folded; following an operation's link opens its path
    assert browser.evaluate("document.querySelectorAll('details.path[open]').length") == 0
    browser.open(page.as_uri() + "#op-1")
    assert browser.evaluate("document.querySelector('#op-1 details.path').open") is True
    # the filter box: the unshare(CLONE_NEWPID) calls alone
    shown = browser.evaluate("""(() => { const box = document.getElementById('filter');
        box.value = 'newpid'; box.dispatchEvent(new Event('input'));
        return [...document.querySelectorAll('#operations tbody')].filter(t => !t.hidden).length; })()""")
    assert shown == sum("CLONE_NEWPID" in r.flags for r in records) == 300


@needs_chromium
@pytest.mark.root("demo makes namespaces and loads BPF")
def test_the_demo_page_keeps_what_was_seen_from_inside(browser, tmp_path):
    from nstrace.session import reader
    session, page = tmp_path / "demo.jsonl", tmp_path / "demo.html"
    done = subprocess.run([str(NSTRACE), "demo", "--flags", "NEWPID|NEWNS|NEWUTS", "--record", str(session),
                           "--picture", "html", "-o", str(page)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "clone NEWNS|NEWUTS|NEWPID: pid=1, uid=0, hostname=nstrace-demo, proc_pids=[1]" in done.stdout
    loaded = reader.load(session)  # held to the schema, seen_inside and all
    assert loaded.end["seen_inside"] == [{"what": "clone NEWNS|NEWUTS|NEWPID",
                                         "facts": {"pid": 1, "uid": 0, "hostname": "nstrace-demo", "proc_pids": [1]}}]
    reads_well(browser, page, len(loaded.records))
    seen = browser.evaluate("""[...document.querySelectorAll('#inside .view')].map(v => [v.querySelector('h3').textContent,
        [...v.querySelectorAll('dt')].map(dt => [dt.textContent, dt.nextElementSibling.firstChild.textContent])])""")
    assert seen == [["clone NEWNS|NEWUTS|NEWPID", [["pid", "1"], ["uid", "0"], ["hostname", "nstrace-demo"],
                                                   ["proc_pids", "1"]]]]


SCENARIOS = ("unshare-uts", "clone-net", "setns-ipc", "clone3-user", "unshare-pid-children-only", "fail-einval")


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """A session of real launcher scenarios on this machine's kernel, a failing call among them."""
    from nstrace.check import catalogue, checker
    from nstrace.session import writer
    path = tmp_path_factory.mktemp("scenarios") / "session.jsonl"
    with checker.tracer_for_check() as tracer:
        recorder = writer.Recorder(path, tracer)
        tee = writer.RecordingTracer(tracer, recorder)
        results = [checker.run_scenario(catalogue.CATALOGUE[name], tee) for name in SCENARIOS]
        recorder.close(tracer.summary())
    assert all(r.ok for r in results), [(r.name, r.error) for r in results if not r.ok]
    return path


@needs_chromium
@pytest.mark.root("the scenarios make namespaces and load BPF")
def test_a_session_of_this_kernel_reads_well_and_links_each_step_to_its_source(browser, scenarios, tmp_path):
    from nstrace.kernel import sourcelines
    from nstrace.session import reader
    from nstrace.view import page as pagemod
    records = reader.load(scenarios).records
    page = render(scenarios, tmp_path / "s.html")
    text = page.read_text()
    # self-contained: nothing to fetch (links to the kernel source are anchors, not loads)
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", text)
    # each documented step links to its definition's line, in the version that line was read from
    spot = sourcelines.where("switch_task_namespaces", os.uname().release)
    assert f"https://elixir.bootlin.com/linux/v{spot.version}/source/kernel/nsproxy.c#L{spot.line}" in text
    tag = pagemod.kernel_tag(os.uname().release, os.uname().version)
    assert f"https://elixir.bootlin.com/linux/{tag}/A/ident/switch_task_namespaces" in text
    reads_well(browser, page, len(records))
    failed = [n for n, r in enumerate(sorted(records, key=lambda r: r.ts), 1) if not r.ok]
    assert failed and browser.evaluate("[...document.querySelectorAll('#timeline rect.mark.failed')]"
                                       ".map(m => +m.id.slice(5))") == failed


@needs_chromium
def test_what_comes_from_outside_stays_text_on_the_page(browser, tmp_path):
    """Every field a session brings (a host, a command, a demo's view from inside) is escaped: markup
    in them is shown, never run, under the page's CSP; a control character is refused with the
    file (the schema), one error line, exit 2."""
    lines = CLONE_61.read_text().splitlines()
    hostile = '</script><img src=x onerror=alert(1)>&amp;"'
    head, *records, end = (json.loads(line) for line in lines)
    head["host"] = hostile
    records = [dict(r, comm=hostile[:15]) for r in records]
    end["seen_inside"] = [{"what": hostile, "facts": {"hostname": hostile, "interfaces": ["lo", hostile],
                                                      "pid": 1, "old_root_empty": True, "monotonic_s": 12.5}}]
    session = tmp_path / "hostile.jsonl"
    session.write_text("".join(json.dumps(obj) + "\n" for obj in (head, *records, end)))
    page = render(session, tmp_path / "hostile.html")
    text = page.read_text()
    assert "<img" not in text and "onerror=alert(1)&gt;" in text and text.count("<script>") == 1
    reads_well(browser, page, len(records))
    assert browser.evaluate("document.querySelector('h1').textContent").endswith(hostile + " 6.1.0-57-amd64")
    facts = browser.evaluate("[...document.querySelectorAll('#inside dd')].map(dd => dd.firstChild.textContent)")
    assert facts == [hostile, f"lo, {hostile}", "1", "true", "12.5"], facts
    end["seen_inside"][0]["facts"]["hostname"] = "\x1b[2J"
    session.write_text("".join(json.dumps(obj) + "\n" for obj in (head, *records, end)))
    done = subprocess.run([str(NSTRACE), "render", str(session), "--format", "html"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"nstrace: error: {session}:{len(lines)}: ") and "seen_inside" in done.stderr


# --- the code under each step ------------------------------------------------------------------

@pytest.fixture(scope="module")
def source_fetched():
    """The default cache holds the kernel source of the lab sessions' series (fetched where it does not)."""
    from nstrace.cli.source import fetch
    from nstrace.linux import kernelsource
    for series in ("5.10", "6.1", "6.12", "7.2"):
        fetch(series, say=print)
    kernelsource.forget()


# Each step of the kernel path that opens on its code: [name, [where...], [call lines], [deciding lines]]
STEP_CODE = """[...document.querySelectorAll('.steps details.step')].map(d => [d.querySelector('.name a').textContent,
    [...d.querySelectorAll('.code p.where')].map(p => p.textContent),
    [...d.querySelectorAll('.code pre .call')].map(l => l.textContent),
    [...d.querySelectorAll('.code pre .decides')].map(l => l.textContent)])"""


@needs_chromium
@pytest.mark.root("fetches the kernel source into the lab's cache, as root does")
def test_each_step_opens_on_its_code_the_call_and_the_deciding_test_marked(browser, source_fetched, tmp_path):
    from nstrace.kernel import sourcelines
    from nstrace.session import reader
    page = render(CLONE_61, tmp_path / "page.html")
    reads_well(browser, page, len(reader.load(CLONE_61).records))
    browser.open(page.as_uri())
    steps = {name: rest for name, *rest in browser.evaluate(STEP_CODE)}
    where, calls, decides = steps["copy_utsname"]
    line = sourcelines.where("copy_utsname", "6.1.0-57-amd64").line
    assert where[0].startswith("called in create_new_namespaces, kernel/nsproxy.c:") and \
        where[1] == f"defined at kernel/utsname.c:{line}", where
    assert [c.split(None, 1)[1] for c in calls] == ["new_nsp->uts_ns = copy_utsname(flags, user_ns, "
                                                    "tsk->nsproxy->uts_ns);"], calls
    assert [d.split(None, 1)[1] for d in decides] == ["if (!(flags & CLONE_NEWUTS))"], decides
    # steps nstrace cannot see on any kernel still open on their code: copy_process, called by kernel_clone
    assert steps["copy_process"][0][0].startswith("called in kernel_clone, kernel/fork.c:")
    # and the steps are folded until opened
    assert browser.evaluate("document.querySelectorAll('.steps details.step[open]').length") == 0


@needs_chromium
def test_without_the_source_a_page_says_how_to_get_it_once(browser, tmp_path):
    empty = tmp_path / "cache"
    done = subprocess.run([str(NSTRACE), "render", str(CLONE_61), "--format", "html", "-o", str(tmp_path / "p.html")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NSTRACE_LAB_CACHE": str(empty)})
    assert done.returncode == 0, done.stderr
    said = ("the kernel source of 6.1 is not here: as root, `nstrace source fetch --kernel 6.1.0-57-amd64` fetches it "
            "from Debian once (then it works offline); showing file:line only")
    assert f"nstrace: {said}\n" in done.stderr
    page = tmp_path / "p.html"
    reads_well(browser, page, 2)
    browser.open(page.as_uri())
    assert browser.evaluate("[...document.querySelectorAll('#operations p.note')].map(p => p.textContent)")[1] == \
        said + "."
    # file:line alone, no code; each step still opens on what it does (shipped with nstrace)
    steps = browser.evaluate(STEP_CODE)
    assert steps and all(where == calls == decides == [] for _, where, calls, decides in steps), steps
    assert all(texts for _, _, texts in browser.evaluate(EXPLAINED))


def test_the_source_is_text_on_the_page():
    """The kernel's source is outside text: markup in it is shown, never parsed; tabs are spaces."""
    from nstrace.kernel import source
    from nstrace.view import page as pagemod
    e = source.Excerpt("f", "kernel/x.c", 3, "6.1.192-3", True,
                       ((3, "\tx = 1; /* </pre><script>alert(1)</script> \x1b[2J */", "decides"), (5, "}", "")))
    assert pagemod.excerpt_html(e, "defined at") == (
        '<p class="where">defined at <a href="https://elixir.bootlin.com/linux/v6.1.192/source/kernel/x.c#L3">'
        'kernel/x.c:3</a></p><pre><span class="decides"><i>3</i>        x = 1; /* &lt;/pre&gt;&lt;script&gt;'
        'alert(1)&lt;/script&gt; \\x1b[2J */</span><span class="gap">\u2026</span><span><i>5</i>}</span></pre>')


EXPLAINED = """[...document.querySelectorAll('.steps details.step')].map(d => [d.querySelector('.name a').textContent,
    d.open, [...d.querySelectorAll('.explain p')].map(p => p.textContent)])"""


@needs_chromium
def test_each_step_expands_on_what_it_does_and_why_it_matters(browser, tmp_path):
    """Each step of the path opens on what it does and the kernel-notes paragraph of its concept,
    with that paragraph's gist (from the package: offline), beside its code; folded until opened, and
    the page still reads well at 1400, 800 and 400 px with every step open."""
    from nstrace.kernel import documented
    from nstrace.session import reader
    session = DATA / "lab-6.1-demo-newns.jsonl"
    page = render(session, tmp_path / "page.html")
    reads_well(browser, page, len(reader.load(session).records))
    browser.open(page.as_uri())
    steps = {name: (opened, texts) for name, opened, texts in browser.evaluate(EXPLAINED)}
    opened, texts = steps["copy_pid_ns"]
    assert not opened
    assert texts == ["does " + documented.does("copy_pid_ns"),
                     "why it matters kernel-notes/pid.md#pid-for-children: " + documented.gist("pid.md#pid-for-children")]
    assert steps["alloc_mnt_ns"][1][1].startswith("why it matters kernel-notes/mnt.md#mount-copying")


@needs_chromium
@pytest.mark.parametrize("capture", sorted(DATA.glob("watch-*-deaths.jsonl")), ids=lambda p: p.stem)
def test_the_graph_draws_each_death_and_says_how_long_it_lived(browser, tmp_path, capture):
    """watch --json of namespaces dying in a lab guest (the exit path, an RCU callback, a umount): each
    free is a died edge to a box of its own, labelled with the lifetime the record gives."""
    from nstrace.session import reader
    records = reader.load(capture).records
    frees = [r for r in records if r.op == "free"]
    page = render(capture, tmp_path / "page.html")
    assert frees and reads_well(browser, page, len(records)) == []
    browser.open(page.as_uri())
    graph = browser.evaluate("document.querySelector('#graph svg').textContent")
    for rec in frees:
        if rec.ns.get("lived_ns") is not None:
            assert re.search(r"died \+\d+\.\d+s, lived \d", graph), graph[:2000]
    assert graph.count("freed") == len(frees), graph[:2000]
    note = browser.evaluate("document.querySelector('#graph p.note').textContent")
    assert "died" in note

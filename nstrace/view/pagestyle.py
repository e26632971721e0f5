"""The HTML page's style sheet and its one script (view/page.py), each hashed into the page's
Content-Security-Policy: the page runs no other inline code, and sets no style attribute.

The layout fits a 1400 px window and wraps below it, never hiding a column: long words from
outside (command names, flags, kernel function names) may break anywhere rather than push a column
out; each kernel-path step is a grid row whose columns are the same in every row, and below 800 px
its cells stack (tests/test_page.py holds the page to this in chromium).
"""

# The timeline's width in SVG units; the picture scales down with the window below it.
TIMELINE_WIDTH = 1300
DEPTHS = 8  # kernel-path steps deeper than this are indented as deep as this

# The operations table's columns (view/page.py _operations), styled by position: a class on each
# cell would cost every operation's row its bytes. The command, flags and namespaces may break
# anywhere (a name from outside is one word of up to 60 characters, \xNN escaped); numbers never.
_COLUMNS = "".join(f"table.ops tbody>tr:first-child>td:nth-child({n}){{{rule}}}" for n, rule in (
    (1, "white-space:nowrap"), (2, "white-space:nowrap"), (3, "overflow-wrap:anywhere"), (5, "overflow-wrap:anywhere"),
    (6, "white-space:nowrap"), (7, "white-space:nowrap"), (8, "overflow-wrap:anywhere"))) + \
    "table.ops tbody>tr:first-child>td:nth-child(8)>span{display:block}" \
    "table.ops tbody>tr:first-child>td:nth-child(8)>span>span{padding:0 .3em;border-radius:.3em}" \
    "table.ops tbody.failed>tr:first-child>td:nth-child(6){color:#b00020;font-weight:600}"

_BASE = """
*,*::before,*::after{box-sizing:border-box}
body{margin:0 auto;max-width:1500px;padding:1.2rem 1.5rem 3rem;font:15px/1.45 system-ui,"Segoe UI",Helvetica,Arial,sans-serif;
color:#1f2328;background:#fff}
a{color:#0b57d0}a:hover{color:#06357a}
h1{font-size:1.55rem;margin:0 0 .3rem;overflow-wrap:anywhere}
h2{font-size:1.2rem;margin:2rem 0 .5rem;padding-bottom:.25rem;border-bottom:1px solid #d8dee4}
h3{font-size:1rem;margin:.2rem 0 .4rem}
p.note{color:#57606a;max-width:80ch;margin:.3rem 0 .7rem}
code,.mono,.steps .name,.steps .src{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.92em}
nav.toc{display:flex;flex-wrap:wrap;gap:.3rem 1.2rem;margin:.6rem 0 0;font-size:.92rem}
dl.session{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.1rem 1rem;margin:.4rem 0 0;font-size:.9rem}
dl.session dt{color:#57606a}dl.session dd{margin:0;overflow-wrap:anywhere}

ul.legend{display:flex;flex-wrap:wrap;gap:.35rem;margin:.3rem 0 .6rem;padding:0;list-style:none;font-size:.85rem}
ul.legend li{padding:.05rem .55rem;border-radius:.8rem;border:1px solid transparent}
ul.legend li.failed{border:1px dashed #b00020;color:#b00020}
span.op{display:inline-block;padding:0 .45rem;border-radius:.7rem;font-size:.9em}

#inside .views{display:flex;flex-wrap:wrap;gap:.8rem}
#inside .view{flex:0 1 44rem;min-width:0;border:1px solid #d8dee4;border-radius:8px;padding:.7rem .9rem;background:#f6f8fa}
#inside dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.25rem 1rem;margin:0}
#inside dt{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.9em}
#inside dd{margin:0;overflow-wrap:anywhere}#inside dd .gloss{display:block;color:#57606a;font-size:.88em}

svg.timeline{display:block;width:100%;height:auto}
svg.timeline .band{fill:#f6f8fa}svg.timeline .tick{stroke:#d0d7de;stroke-width:1}
svg.timeline .axis{font-size:12px;fill:#57606a}svg.timeline .lane{font-size:12px;fill:#1f2328}
svg.timeline .mark{stroke:#fff;stroke-width:1}svg.timeline .mark.failed{opacity:.5;stroke:#b00020;stroke-dasharray:3 2}
svg.timeline .num{font-size:11px;fill:#1f2328}
svg.timeline a:hover .mark,svg.timeline a:focus .mark{stroke:#1f2328;stroke-width:2}

#graph svg{display:block;max-width:100%;height:auto}
#graph .wide{overflow-x:auto;border:1px solid #d8dee4;border-radius:6px}#graph .wide svg{max-width:none}
#graph p.edges{font-size:.9rem}

#filter{margin:.3rem 0 .6rem;padding:.3rem .5rem;width:min(24rem,100%);font:inherit}
table.ops{border-collapse:collapse;width:100%;font-size:.88rem}
table.ops th{text-align:left;background:#f6f8fa;border-bottom:2px solid #d8dee4;padding:.35rem .45rem;white-space:nowrap}
table.ops td{padding:.4rem .45rem;vertical-align:top;border-top:1px solid #d8dee4;overflow-wrap:break-word}
""" + _COLUMNS + """
table.ops tbody:target td{background:#fff8c5}
table.ops tr.path td{border-top:none;padding:0 .45rem .9rem 2.2rem}

details.path>summary{cursor:pointer;color:#57606a;font-size:.88rem;padding:.1rem 0 .3rem}
.steps{font-size:.85rem;border:1px solid #d8dee4;border-radius:6px;overflow:hidden}
.steps .row{display:grid;grid-template-columns:minmax(0,1.7fr) 8.5em minmax(0,3.3fr) 4em minmax(0,1.4fr);column-gap:.8rem;
padding:.2rem .6rem;border-top:1px solid #eaeef2}
.steps .row>span{min-width:0;overflow-wrap:anywhere}
.steps .head{font-weight:600;background:#f6f8fa;border-top:none}
.steps .us{text-align:right;font-variant-numeric:tabular-nums}
.steps .status,.steps .src,.steps .why{color:#57606a}
.steps .why{display:block;font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.92em}
.steps .observed .status{color:#1a7f37}
.steps .not-observed .status,.steps .unexpected .status,.steps .out-of-order .status,
.steps .out-of-place .status{color:#b00020;font-weight:600}
.steps .not-observable .name,.steps .not-expected .name{color:#57606a}
.steps .created .values{font-weight:600}
.steps a.def{font-size:.85em;color:#6e7781;margin-left:.3em}
.steps details>summary{cursor:pointer;list-style:none}
.steps details>summary::-webkit-details-marker{display:none}
.steps details>summary .name::before{content:"\\25b8\\00a0";color:#6e7781}
.steps details[open]>summary .name::before{content:"\\25be\\00a0"}
.steps .more{padding:.3rem .8rem .6rem 2rem;background:#fbfcfd;border-top:1px dashed #eaeef2}
.steps .more{font-size:.95em}
.explain p{margin:.2rem 0 .3rem;overflow-wrap:anywhere}.explain b{color:#57606a;font-weight:600;margin-right:.3em}
.code p.where{margin:.4rem 0 .1rem;color:#57606a}
.code pre{margin:0 0 .3rem;padding:.3rem 0;background:#f6f8fa;border:1px solid #eaeef2;border-radius:4px;
white-space:pre-wrap;overflow-wrap:anywhere;font-size:.92em;line-height:1.35}
.code pre>span{display:block;min-height:1.35em;padding:0 .6rem 0 5.2em;text-indent:-4.6em}
.code pre i{display:inline-block;width:4.6em;text-indent:0;padding-right:.8em;text-align:right;font-style:normal;color:#8c959f}
.code .decides,#operations span.decides{background:#fff3b0}.code .call,#operations span.call{background:#ddf4ff}
.code .decides>i::before{content:"* "}.code .call>i::before{content:"> "}
.code .gap{color:#8c959f;text-indent:0;padding-left:3.4em}

@media (max-width:800px){
.steps .row{grid-template-columns:minmax(0,1fr) auto;grid-template-areas:"name status" "values us" "src src"}
.steps .head{display:none}
.steps .name{grid-area:name}.steps .status{grid-area:status}.steps .values{grid-area:values}
.steps .us{grid-area:us}.steps .src{grid-area:src}
table.ops tr.path td{padding-left:.45rem}
}
@media (max-width:900px){
table.ops,table.ops tbody,table.ops tr,table.ops td{display:block}
table.ops thead{display:none}
table.ops tbody{border-top:1px solid #d8dee4;padding:.3rem 0}
table.ops tbody>tr:first-child{display:flex;flex-wrap:wrap;gap:.1rem 1.2rem}
table.ops td{border:none;padding:.1rem 0}
table.ops tr.path td{padding:.2rem 0 .4rem}
table.ops tbody>tr:first-child>td:nth-child(8){flex-basis:100%}
""" + "".join(f"table.ops tbody>tr:first-child>td:nth-child({i})::before{{content:\"{label} \";color:#57606a}}"
              for i, label in ((6, "ret"), (7, "child"), (9, "/proc"), (10, "kernel path"))) + """
}
"""


def css(type_colours, op_colours):
    """The style sheet, with a class per namespace type (t-TYPE) and op (o-OP) in its colour, and the
    kernel path's indentation per depth."""
    depths = "".join(f".steps .d{d} .name{{padding-left:{0.2 + 1.1 * d:.1f}em}}" for d in range(DEPTHS))
    # stacked (narrow): the whole step is indented, its lines below its name too
    depths += "@media (max-width:800px){.steps .name{padding-left:0}" + "".join(
        f".steps .d{d}.row,.steps .d{d}>.row{{padding-left:{0.6 + 1.1 * d:.1f}em}}" for d in range(DEPTHS)) + "}"
    types = "".join(f".t-{t}{{background:{c}}}" for t, c in type_colours.items())
    ops = "".join(f".o-{o}{{background:{c};color:#fff}}" for o, c in op_colours.items())
    return _BASE + depths + "\n" + types + "\n" + ops + "\n"


# The only script: the filter box over the operations (their rows, not the code of their paths), and a kernel path opened when its operation
# is linked to (#op-N, from the timeline). It marks the page ready when it ran to its end, which
# the tests read in the rendered DOM.
SCRIPT = """
(function () {
  var box = document.getElementById("filter");
  var ops = document.querySelectorAll("#operations tbody");
  box.addEventListener("input", function () {
    var want = box.value.toLowerCase();
    ops.forEach(function (op) {
      op.hidden = want !== "" && op.rows[0].textContent.toLowerCase().indexOf(want) < 0;
    });
  });
  function reveal() {
    var op = location.hash && document.getElementById(location.hash.slice(1));
    if (op && op.tagName === "TBODY") {
      op.querySelectorAll("details.path").forEach(function (d) { d.open = true; });
    }
  }
  window.addEventListener("hashchange", reveal);
  reveal();
  document.body.setAttribute("data-ready", "1");
})();
"""

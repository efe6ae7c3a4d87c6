"""Drive the real ComfyUI frontend in headless Chromium (Debian `chromium` + `playwright-core` from
npm, both installed by scripts/test.sh; nothing is downloaded at test time).

    result = load_workflow_in_editor(server.url, workflow, "artifacts/x.png")
    result["missing_node_types"]  # node types the editor does not know (what users see as red nodes)
    result["page_errors"]         # uncaught exceptions in the page
    result["node_count"]          # nodes in the loaded graph
    result["api_prompt"]          # the editor's own UI->API conversion (graphToPrompt), runnable
                                  # with ComfyServer.run(); None if conversion raised (see api_error)

load_workflows_in_editor(server_url, {name: workflow, ...}, screenshot_dir) does the same for
many workflows in one editor session and also returns what the editor would save (round trip).

The workflow may be in UI format (what users share: nodes + links) or API format
({id: {class_type, inputs}}). Python writes a small CommonJS script and runs it with node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import requests

CACHE = os.environ.get("FACEX_CACHE", os.path.expanduser("~/.cache/facex-dev"))
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-dev-shm-usage"]


class BrowserUnavailable(RuntimeError):
    pass


def node_dir() -> str:
    return os.environ.get("FACEX_NODE_DIR", os.path.join(CACHE, "node"))


def playwright_core_path() -> str:
    path = os.path.join(node_dir(), "node_modules", "playwright-core")
    if not os.path.isfile(os.path.join(path, "package.json")):
        raise BrowserUnavailable(f"playwright-core is not installed in {node_dir()}/node_modules; "
                                 f"scripts/test.sh installs it (npm install from tests/e2e/package.json)")
    return path


def chromium_path() -> str:
    for path in ([os.environ["FACEX_CHROMIUM"]] if os.environ.get("FACEX_CHROMIUM") else []) + list(CHROMIUM_CANDIDATES):
        if path and os.access(path, os.X_OK):
            return path
    raise BrowserUnavailable("no Chromium found (looked at $FACEX_CHROMIUM and "
                             f"{', '.join(CHROMIUM_CANDIDATES)}); scripts/test.sh installs Debian's `chromium`")


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise BrowserUnavailable("node is not installed; scripts/test.sh installs nodejs")
    return node


_SCRIPT = r"""
const [pwPath, chromiumPath, flagsJson, url, workflowPath, screenshotPath, timeoutMs] = process.argv.slice(2);
const { chromium } = require(pwPath);
const fs = require('fs');

(async () => {
  const workflow = JSON.parse(fs.readFileSync(workflowPath, 'utf8'));
  const result = { page_errors: [], console_errors: [], failed_requests: [], missing_node_types: [], node_count: 0 };
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true,
                                          args: JSON.parse(flagsJson) });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    page.setDefaultTimeout(Number(timeoutMs));
    page.on('pageerror', e => result.page_errors.push(String((e && e.stack) || e)));
    page.on('console', m => { if (m.type() === 'error') result.console_errors.push(m.text()); });
    page.on('response', r => { if (r.status() >= 400) result.failed_requests.push(r.status() + ' ' + r.url()); });
    page.on('requestfailed', r => result.failed_requests.push('failed ' + r.url()));
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    // The app is ready when the node definitions from /object_info are registered.
    await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph &&
      'KSampler' in (window.LiteGraph.registered_node_types || {}));
    const loaded = await page.evaluate(async (wf) => {
      const app = window.app;
      const registered = window.LiteGraph.registered_node_types;
      const isApi = wf && !Array.isArray(wf) && !wf.nodes &&
        Object.values(wf).every(n => n && typeof n === 'object' && n.class_type);
      // Missing types as the editor decides them (loadGraphData): by type name, subgraphs included.
      const wanted = [];
      if (isApi) {
        for (const n of Object.values(wf)) wanted.push(n.class_type);
      } else {
        for (const n of wf.nodes || []) wanted.push(n.type);
        for (const sg of (wf.definitions && wf.definitions.subgraphs) || []) for (const n of sg.nodes || []) wanted.push(n.type);
      }
      const missing = [...new Set(wanted.filter(t => !(t in registered)))];
      if (isApi) app.loadApiJson(wf, 'facex-test.json');
      else await app.loadGraphData(wf, true, true, 'facex-test.json');
      await new Promise(r => setTimeout(r, 300));
      const nodes = app.graph.nodes || app.graph._nodes || [];
      let apiPrompt = null, apiError = null;
      try { apiPrompt = (await app.graphToPrompt()).output; } catch (e) { apiError = String((e && e.stack) || e); }
      const facex = Object.keys(registered).filter(t => t.startsWith('FaceX')).sort();
      return { format: isApi ? 'api' : 'ui', missing_node_types: missing, node_count: nodes.length,
               graph_node_types: nodes.map(n => n.type), api_prompt: apiPrompt, api_error: apiError,
               registered_facex_node_types: facex };
    }, workflow);
    Object.assign(result, loaded);
    await page.waitForTimeout(500);  // let the canvas draw before the screenshot
    await page.screenshot({ path: screenshotPath });
  } finally {
    await browser.close();
  }
  process.stdout.write('FACEX_RESULT ' + JSON.stringify(result) + '\n');
})().catch(e => {
  process.stdout.write('FACEX_FATAL ' + JSON.stringify(String((e && e.stack) || e)) + '\n');
  process.exit(2);
});
"""


def dismiss_first_run_dialogs(server_url: str) -> None:
    """The first load shows the templates browser; a completed tutorial skips it."""
    r = requests.post(server_url.rstrip("/") + "/api/settings", json={"Comfy.TutorialCompleted": True}, timeout=30)
    r.raise_for_status()


def load_workflow_in_editor(server_url: str, workflow_json, screenshot_path: str, timeout: float = 120) -> dict:
    """Open the editor, load `workflow_json` (dict, JSON text or a path to a .json file), and report
    {"missing_node_types", "page_errors", "node_count", "console_errors", "failed_requests",
    "api_prompt", "api_error", "graph_node_types", "registered_facex_node_types", "format",
    "screenshot"}. Console errors and failed requests are reported, not judged: the stock 0.3.75
    frontend logs a few on its own (404s for optional endpoints, blocked calls to api.comfy.org)."""
    if isinstance(workflow_json, (str, os.PathLike)) and os.path.isfile(workflow_json):
        with open(workflow_json) as f:
            workflow = json.load(f)
    elif isinstance(workflow_json, str):
        workflow = json.loads(workflow_json)
    else:
        workflow = workflow_json
    dismiss_first_run_dialogs(server_url)
    screenshot_path = os.path.abspath(screenshot_path)
    os.makedirs(os.path.dirname(screenshot_path), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="facex-browser-") as tmp:
        script = os.path.join(tmp, "load_workflow.cjs")
        wf_path = os.path.join(tmp, "workflow.json")
        with open(script, "w") as f:
            f.write(_SCRIPT)
        with open(wf_path, "w") as f:
            json.dump(workflow, f)
        cmd = [node_binary(), script, playwright_core_path(), chromium_path(), json.dumps(CHROMIUM_FLAGS),
               server_url, wf_path, screenshot_path, str(int(timeout * 1000))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60,
                              env=dict(os.environ, HOME=tmp))  # a throw-away Chromium profile home
    for line in proc.stdout.splitlines():
        if line.startswith("FACEX_RESULT "):
            result = json.loads(line[len("FACEX_RESULT "):])
            result["screenshot"] = screenshot_path
            return result
    raise RuntimeError(f"the browser script failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------
# Many workflows in one editor session (one Chromium start and one page load for all of them:
# starting the editor costs ~20 s on 2 busy cores, loading one more workflow about a second).

_BATCH_SCRIPT = r"""
const [pwPath, chromiumPath, flagsJson, url, jobsPath, resultPath, timeoutMs] = process.argv.slice(2);
const { chromium } = require(pwPath);
const fs = require('fs');

(async () => {
  const jobs = JSON.parse(fs.readFileSync(jobsPath, 'utf8'));
  const out = { startup_page_errors: [], startup_console_errors: [], results: {} };
  const pageErrors = [], consoleErrors = [];
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true,
                                          args: JSON.parse(flagsJson) });
  try {
    const page = await browser.newPage({ viewport: { width: 2400, height: 1400 } });
    page.setDefaultTimeout(Number(timeoutMs));
    page.on('pageerror', e => pageErrors.push(String((e && e.stack) || e)));
    page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    const t0 = Date.now();
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph &&
      'KSampler' in (window.LiteGraph.registered_node_types || {}));
    out.startup_seconds = (Date.now() - t0) / 1000;
    out.startup_page_errors = pageErrors.splice(0);
    out.startup_console_errors = consoleErrors.splice(0);
    for (const job of jobs) {
      const t1 = Date.now();
      const loaded = await page.evaluate(async ({ wf, name }) => {
        const app = window.app;
        const registered = window.LiteGraph.registered_node_types;
        const wanted = (wf.nodes || []).map(n => n.type);
        for (const sg of (wf.definitions && wf.definitions.subgraphs) || []) for (const n of sg.nodes || []) wanted.push(n.type);
        const missing = [...new Set(wanted.filter(t => !(t in registered)))];
        let loadError = null;
        try { await app.loadGraphData(wf, true, true, name); } catch (e) { loadError = String((e && e.stack) || e); }
        await new Promise(r => setTimeout(r, 300));
        const nodes = app.graph.nodes || app.graph._nodes || [];
        let apiPrompt = null, apiError = null;
        try { apiPrompt = (await app.graphToPrompt()).output; } catch (e) { apiError = String((e && e.stack) || e); }
        // What the editor would save: the round trip shows whether it read every widget and link
        // of the file the way the file meant them.
        let saved = null;
        try { saved = JSON.parse(JSON.stringify(app.graph.serialize())); } catch (e) { apiError = apiError || String(e); }
        try {
          if (app.extensionManager && app.extensionManager.command) await app.extensionManager.command.execute('Comfy.Canvas.FitView');
          else app.canvas.fitViewToSelectionAnimated();
        } catch (e) { try { app.canvas.fitViewToSelectionAnimated(); } catch (e2) {} }
        return { missing_node_types: missing, node_count: nodes.length, load_error: loadError,
                 graph_node_types: nodes.map(n => n.type), api_prompt: apiPrompt, api_error: apiError,
                 saved_graph: saved };
      }, { wf: job.workflow, name: job.name });
      await page.waitForTimeout(700);  // the fit-view animation and the canvas draw
      if (job.screenshot) await page.screenshot({ path: job.screenshot });
      loaded.page_errors = pageErrors.splice(0);
      loaded.console_errors = consoleErrors.splice(0);
      loaded.seconds = (Date.now() - t1) / 1000;
      out.results[job.name] = loaded;
    }
  } finally {
    await browser.close();
  }
  fs.writeFileSync(resultPath, JSON.stringify(out));
  process.stdout.write('FACEX_DONE\n');
})().catch(e => {
  process.stdout.write('FACEX_FATAL ' + JSON.stringify(String((e && e.stack) || e)) + '\n');
  process.exit(2);
});
"""


def load_workflows_in_editor(server_url: str, workflows: dict, screenshot_dir: str | None = None,
                             timeout: float = 120) -> dict:
    """Load several UI-format workflows one after another into one editor page.

    `workflows` maps a name to a workflow (dict, JSON text or .json path). Returns
    {"startup_seconds", "startup_page_errors", "startup_console_errors",
     "results": {name: {"missing_node_types", "load_error", "page_errors", "console_errors",
                        "node_count", "graph_node_types", "api_prompt", "api_error",
                        "saved_graph", "seconds", "screenshot"}}}
    where `api_prompt` is the editor's own graphToPrompt() output and `saved_graph` what the editor
    would save (app.graph.serialize()). Page errors are attributed to the workflow being loaded
    when they happened. Screenshots go to <screenshot_dir>/<name>.png when a folder is given."""
    jobs = []
    for name, wf in workflows.items():
        if isinstance(wf, (str, os.PathLike)) and os.path.isfile(wf):
            with open(wf) as f:
                wf = json.load(f)
        elif isinstance(wf, str):
            wf = json.loads(wf)
        shot = None
        if screenshot_dir:
            os.makedirs(screenshot_dir, exist_ok=True)
            shot = os.path.abspath(os.path.join(screenshot_dir, f"{name}.png"))
            if os.path.exists(shot):
                os.remove(shot)
        jobs.append({"name": name, "workflow": wf, "screenshot": shot})
    dismiss_first_run_dialogs(server_url)
    # Draw node titles and widgets at any zoom (the editor simplifies small text by default), so a
    # whole workflow fitted into one screenshot stays readable.
    requests.post(server_url.rstrip("/") + "/api/settings", json={"LiteGraph.Canvas.MinFontSizeForLOD": 0},
                  timeout=30).raise_for_status()
    with tempfile.TemporaryDirectory(prefix="facex-browser-") as tmp:
        script = os.path.join(tmp, "load_workflows.cjs")
        jobs_path = os.path.join(tmp, "jobs.json")
        result_path = os.path.join(tmp, "result.json")
        with open(script, "w") as f:
            f.write(_BATCH_SCRIPT)
        with open(jobs_path, "w") as f:
            json.dump(jobs, f)
        cmd = [node_binary(), script, playwright_core_path(), chromium_path(), json.dumps(CHROMIUM_FLAGS),
               server_url, jobs_path, result_path, str(int(timeout * 1000))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30 * len(jobs) + 60,
                              env=dict(os.environ, HOME=tmp))
        if "FACEX_DONE" not in proc.stdout or not os.path.isfile(result_path):
            raise RuntimeError(f"the browser script failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        with open(result_path) as f:
            out = json.load(f)
    for job in jobs:
        out["results"][job["name"]]["screenshot"] = job["screenshot"]
    return out

// Drives the task-queue page in headless Chromium: submit, watch the status reach an end, read
// the result. Prints one JSON line; exits non-zero on a browser-side failure.
// usage: node task_queue.cjs PLAYWRIGHT_CORE_DIR URL INPUT
const [playwrightDir, url, input] = process.argv.slice(2);
const { chromium } = require(playwrightDir);

(async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const consoleErrors = [];
  try {
    const page = await browser.newPage();
    page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    await page.goto(url);
    await page.fill("#input", input);
    await page.click("#submit");
    await page.waitForFunction(
      () => ["done", "failed"].includes(document.getElementById("status").textContent),
      null, { timeout: 60000, polling: 50 });
    const read = (id) => page.$eval(id, (e) => e.textContent);
    const history = await page.$$eval("#history li", (lis) => lis.map((li) => li.textContent));
    console.log(JSON.stringify({
      task: await read("#task-id"), status: await read("#status"), result: await read("#result"),
      history, consoleErrors,
    }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });

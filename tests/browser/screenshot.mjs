// Drives headless Chromium for tests/test_viewer_browser.py.
//
//   node screenshot.mjs URL CHROMIUM WIDTH HEIGHT
//
// Opens URL, prints "ready" once the page has a canvas, then answers lines on stdin:
//   shot PATH     write a PNG screenshot to PATH, print "done"
//   click TEXT    click the button labelled TEXT, print "done"
//   quit          close the browser
import readline from "node:readline";

import { chromium } from "playwright-core";

const [url, executablePath, width, height] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // WebGL without a GPU: ANGLE on SwiftShader, the software Vulkan renderer.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
  ],
});
const page = await browser.newPage({ viewport: { width: Number(width), height: Number(height) } });
page.on("console", (msg) => {
  if (msg.type() === "error") console.error(`console: ${msg.text()}`);
});
page.on("pageerror", (err) => console.error(`page error: ${err.message}`));
await page.goto(url);
await page.waitForSelector("canvas", { timeout: 30000 });
console.log("ready");

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const [command, ...rest] = line.trim().split(/\s+/);
  const argument = rest.join(" ");
  if (command === "shot") {
    await page.screenshot({ path: argument, timeout: 0 });
    console.log("done");
  } else if (command === "click") {
    await page.getByRole("button", { name: argument, exact: true }).click({ timeout: 0 });
    console.log("done");
  } else if (command === "quit") {
    break;
  }
}
await browser.close();

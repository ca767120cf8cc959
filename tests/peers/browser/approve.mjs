// A person approving (or denying) a payment on tollgate's local approval page, in headless
// Debian Chromium driven by playwright-core. Never downloads a browser.
//
// Usage: node approve.mjs <approve_url> <approve|deny>
// Prints one JSON line: {"before": <page text>, "after": <page text>, "status": <HTTP status>}.
import { chromium } from 'playwright-core';

const [url, decision] = process.argv.slice(2);
if (!url || !['approve', 'deny'].includes(decision)) {
  console.error('usage: node approve.mjs <approve_url> <approve|deny>');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  const page = await browser.newPage();
  const response = await page.goto(url);
  const before = await page.innerText('body');
  const [answer] = await Promise.all([
    page.waitForNavigation(),
    page.click(decision === 'approve' ? '#approve' : '#deny'),
  ]);
  const after = await page.innerText('body');
  console.log(JSON.stringify({ before, after, status: response.status(), decided: answer?.status() }));
} finally {
  await browser.close();
}

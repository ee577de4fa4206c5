// An analyst's triage in a real headless browser: log in, claim the next case
// with the keyboard, read why it was flagged, add a note, stop the selected
// payment with `f`, see its resolution on the page, then tag every open case
// at once from the queue page's bulk form. Prints what it did as
// JSON for tests/review_browser.rs, which checks the database.
//
//   node tests/browser/review.mjs BASE_URL NAME PASSWORD [SCREENSHOT_ON_FAILURE]
import { chromium } from "playwright-core";

const [base, name, password, failureShot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
const page = await browser.newPage();
const problems = [];
page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });

function check(ok, what) {
  if (!ok) throw new Error(what);
}

try {
  await page.goto(`${base}/review`);
  check(page.url() === `${base}/review/login`, `not sent to the login page: ${page.url()}`);
  await page.fill('input[name="name"]', name);
  await page.fill('input[name="password"]', "not the password");
  await page.click('button[type="submit"]');
  await page.locator("#flash.error").waitFor();
  check((await page.textContent("#flash")).includes("login failed"), "a wrong password is not said");
  // The browser logs the refused login's 401 as a console error: expected here.
  problems.length = 0;

  await page.fill('input[name="password"]', password);
  await page.click('button[type="submit"]');
  await page.waitForURL(`${base}/review`);
  await page.locator("table.queues").waitFor();
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "vigil_review");
  check(session && session.httpOnly && session.secure && session.sameSite === "Strict", `cookie flags: ${JSON.stringify(session)}`);
  check(await page.evaluate(() => !document.cookie.includes("vigil_review")), "a script can read the session cookie");

  await page.keyboard.press("n");
  await page.waitForURL(/\/review\/cases\/\d+$/);
  const caseId = Number(new URL(page.url()).pathname.split("/").pop());
  const main = await page.textContent("main");
  check(main.includes("Why it was flagged") && main.includes("held by you"), "the case page does not say why, or who holds it");

  const note = "called the cardholder: not them";
  await page.fill('textarea[name="body"]', note);
  await page.click("form[data-note-url] button");
  await page.locator("blockquote.note", { hasText: note }).waitFor();

  const selected = page.locator("article.payment.selected");
  const transaction = await selected.getAttribute("data-transaction");
  check(transaction, "no payment is selected for the keyboard");
  await page.locator("body").click({ position: { x: 1, y: 1 } });
  await page.keyboard.press("f");
  await page.locator(`article.payment[data-transaction="${transaction}"] .badge.resolved`, { hasText: "stop" }).waitFor();

  // Back on the queue page: select every open case with `a` and tag them
  // all with the bulk form; the page says what happened to each.
  await page.goto(`${base}/review`);
  await page.locator("table.cases").waitFor();
  const boxes = page.locator('input[name="case"]');
  const open = await boxes.count();
  check(open >= 2, `the queue page lists ${open} open cases`);
  await page.locator("body").click({ position: { x: 1, y: 1 } });
  await page.keyboard.press("a");
  check((await page.locator('input[name="case"]:checked').count()) === open, "`a` did not select the page");
  await page.selectOption('#bulk select[name="action"]', "tag");
  await page.fill('#bulk input[name="tag"]', "bulk-checked");
  await page.click('#bulk button[type="submit"]');
  await page.locator("#flash", { hasText: `${open} of ${open} cases done` }).waitFor();

  check(problems.length === 0, problems.join("; "));
  console.log(JSON.stringify({ case: caseId, transaction, bulk_tagged: open }));
} catch (e) {
  if (failureShot) await page.screenshot({ path: failureShot, fullPage: true }).catch(() => {});
  console.error(`${e.message}\n(at ${page.url()})${problems.length ? `\n${problems.join("\n")}` : ""}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}

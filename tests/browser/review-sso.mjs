// Single sign-on in a real headless browser: from the review server's login
// page to the identity provider (tests/browser/oidc-provider.mjs), its login
// and consent, and back with a session; then an account the provider gives
// no role is refused with the reason on the login page. Prints what it saw
// as JSON for tests/review_browser.rs, which checks the database.
//
//   node tests/browser/review-sso.mjs BASE_URL [SCREENSHOT_ON_FAILURE]
import { chromium } from "playwright-core";

const [base, failureShot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
const problems = [];

function check(ok, what) {
  if (!ok) throw new Error(what);
}

// One login through the provider, in a browser of its own; where it lands.
// `refusedWith`: the status the review server refuses this login with, whose
// "failed to load" console line is expected.
async function signIn(login, refusedWith) {
  const context = await browser.newContext();
  const page = await context.newPage();
  // Only the review server's pages are held to having no script errors (the
  // provider's development pages ask for a font from the closed internet).
  page.on("pageerror", (e) => { if (page.url().startsWith(base)) problems.push(`script error: ${e.message}`); });
  page.on("console", (m) => {
    const expected = refusedWith && m.text().includes(`status of ${refusedWith}`);
    if (m.type() === "error" && page.url().startsWith(base) && !expected) problems.push(`console: ${m.text()}`);
  });
  try {
    await page.goto(`${base}/review/login`);
    await page.click("#sso");
    await page.waitForSelector('input[name="login"]');
    await page.fill('input[name="login"]', login);
    await page.fill('input[name="password"]', "any password the development form takes");
    await page.click('button[type="submit"]');
    // The consent page, when the provider asks.
    await page.waitForLoadState();
    if (!page.url().startsWith(base)) {
      await page.click('button[type="submit"]');
    }
    // Back at the review server: the queues (the callback's page moves on by
    // itself), or the login page saying why not.
    await page.waitForURL((u) => u.toString().startsWith(base));
    const until = Date.now() + 15000;
    for (;;) {
      const landed = await page.locator("table.queues, #login").count().catch(() => 0);
      if (landed > 0) break;
      check(Date.now() < until, "neither the queues nor the login page after the provider");
      await page.waitForTimeout(100);
    }
    const cookies = await context.cookies();
    return { url: page.url(), text: await page.textContent("body"), session: cookies.some((c) => c.name === "vigil_review") };
  } catch (e) {
    if (failureShot) await page.screenshot({ path: failureShot, fullPage: true }).catch(() => {});
    throw new Error(`${login}: ${e.message} (at ${page.url()})`);
  } finally {
    await context.close();
  }
}

try {
  const lee = await signIn("lee");
  check(lee.url === `${base}/review`, `lee landed on ${lee.url}`);
  check(lee.session, "no session cookie after single sign-on");
  check(lee.text.includes("lee") && lee.text.includes("Queues"), `the queue page does not greet lee: ${lee.text.slice(0, 200)}`);
  const nobody = await signIn("nobody", 403);
  check(!nobody.session, "an account without a role got a session");
  check(nobody.text.includes("no Vigil role"), `the refusal does not say why: ${nobody.text.slice(0, 300)}`);
  check(problems.length === 0, problems.join("; "));
  console.log(JSON.stringify({ lee: lee.url, nobody: nobody.url }));
} catch (e) {
  console.error(`${e.message}${problems.length ? `\n${problems.join("\n")}` : ""}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}

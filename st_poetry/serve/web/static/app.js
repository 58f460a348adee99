// Optional: search without reloading the page. Without this script the form and the example links do the
// same through ordinary page loads, because the server renders the results.
"use strict";

const form = document.getElementById("search");
const input = form.elements.q;
const results = document.getElementById("results");

async function show(url, push) {
  results.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(url);
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    results.innerHTML = page.getElementById("results").innerHTML;
    document.title = page.title;
    if (push) history.pushState(null, "", url);
  } catch (error) {
    results.innerHTML = '<p class="error"></p>';
    results.firstChild.textContent = `the server did not answer (${error.message}); try again`;
  } finally {
    results.removeAttribute("aria-busy");
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  show("/?" + new URLSearchParams(new FormData(form)), true);
});

document.querySelector(".examples").addEventListener("click", (event) => {
  const link = event.target.closest("a");
  if (!link) return;
  event.preventDefault();
  input.value = link.textContent;
  show(link.href, true);
});

window.addEventListener("popstate", () => {
  input.value = new URLSearchParams(location.search).get("q") || "";
  show(location.href, false);
});

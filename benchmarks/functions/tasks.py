"""The function benchmark's tasks: a description the model sees, and what it never sees —
reference tests (positional `args` → `expected`, or an `assertion` over `result`) and a
reference solution (used only by the scripted model of `--quick`, and to check the tests).
"""

from __future__ import annotations

TASKS: list[dict] = [
    {
        "id": "add",
        "description": "Write a Python function `add(a, b)` that returns the sum of the two numbers a and b.",
        "solution": "def add(a, b):\n    return a + b\n",
        "reference": [([2, 3], 5), ([-1, 1], 0), ([0, 0], 0), ([1.5, 2.25], 3.75), ([100, -250], -150)],
    },
    {
        "id": "is_palindrome",
        "description": "Write a Python function `is_palindrome(s)` that returns True if the string s reads the same forwards and backwards, else False.",
        "solution": "def is_palindrome(s):\n    return s == s[::-1]\n",
        "reference": [(["racecar"], True), (["hello"], False), ([""], True), (["a"], True), (["abba"], True), (["ab"], False)],
    },
    {
        "id": "fizzbuzz",
        "description": "Write a Python function `fizzbuzz(n)` that returns 'FizzBuzz' if n is divisible by 15, 'Fizz' if divisible by 3, 'Buzz' if divisible by 5, otherwise str(n).",
        "solution": "def fizzbuzz(n):\n    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n        return 'Fizz'\n    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)\n",
        "reference": [([3], "Fizz"), ([5], "Buzz"), ([15], "FizzBuzz"), ([7], "7"), ([30], "FizzBuzz"), ([9], "Fizz")],
    },
    {
        "id": "factorial",
        "description": "Write a Python function `factorial(n)` that returns n! for a non-negative integer n (factorial(0) is 1).",
        "solution": "def factorial(n):\n    out = 1\n    for i in range(2, n + 1):\n        out *= i\n    return out\n",
        "reference": [([0], 1), ([1], 1), ([5], 120), ([10], 3628800)],
    },
    {
        "id": "fibonacci",
        "description": "Write a Python function `fibonacci(n)` that returns the n-th Fibonacci number, where fibonacci(0) is 0 and fibonacci(1) is 1.",
        "solution": "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        "reference": [([0], 0), ([1], 1), ([2], 1), ([10], 55), ([20], 6765)],
    },
    {
        "id": "is_prime",
        "description": "Write a Python function `is_prime(n)` that returns True if the integer n is a prime number, else False.",
        "solution": "def is_prime(n):\n    if n < 2:\n        return False\n    return all(n % d for d in range(2, int(n ** 0.5) + 1))\n",
        "reference": [([2], True), ([1], False), ([0], False), ([17], True), ([21], False), ([97], True), ([-7], False)],
    },
    {
        "id": "reverse_string",
        "description": "Write a Python function `reverse_string(s)` that returns the string s reversed.",
        "solution": "def reverse_string(s):\n    return s[::-1]\n",
        "reference": [(["abc"], "cba"), ([""], ""), (["a"], "a"), (["hello world"], "dlrow olleh")],
    },
    {
        "id": "count_vowels",
        "description": "Write a Python function `count_vowels(s)` that returns how many vowels (a, e, i, o, u, upper or lower case) the string s contains.",
        "solution": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)\n",
        "reference": [(["hello"], 2), (["AEIOU"], 5), ([""], 0), (["rhythm"], 0), (["Banana"], 3)],
    },
    {
        "id": "max_of_list",
        "description": "Write a Python function `max_of_list(xs)` that returns the largest number in the non-empty list xs.",
        "solution": "def max_of_list(xs):\n    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n            best = x\n    return best\n",
        "reference": [([[1, 5, 3]], 5), ([[-4, -2, -9]], -2), ([[7]], 7), ([[2, 2, 2]], 2)],
    },
    {
        "id": "sum_of_digits",
        "description": "Write a Python function `sum_of_digits(n)` that returns the sum of the decimal digits of the non-negative integer n.",
        "solution": "def sum_of_digits(n):\n    return sum(int(d) for d in str(n))\n",
        "reference": [([123], 6), ([0], 0), ([9], 9), ([1005], 6), ([99999], 45)],
    },
    {
        "id": "gcd",
        "description": "Write a Python function `gcd(a, b)` that returns the greatest common divisor of the positive integers a and b.",
        "solution": "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n",
        "reference": [([12, 18], 6), ([7, 13], 1), ([10, 10], 10), ([100, 75], 25), ([1, 5], 1)],
    },
    {
        "id": "celsius_to_fahrenheit",
        "description": "Write a Python function `celsius_to_fahrenheit(c)` that converts a temperature in degrees Celsius to degrees Fahrenheit.",
        "solution": "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32\n",
        "reference": [([0], 32), ([100], 212), ([-40], -40), ([37], 98.6)],
    },
    {
        "id": "word_count",
        "description": "Write a Python function `word_count(s)` that returns the number of words in the string s, words being separated by whitespace.",
        "solution": "def word_count(s):\n    return len(s.split())\n",
        "reference": [(["hello world"], 2), ([""], 0), (["  lots   of   space  "], 3), (["one"], 1)],
    },
    {
        "id": "remove_duplicates",
        "description": "Write a Python function `remove_duplicates(xs)` that returns a new list with the duplicates of list xs removed, keeping the first occurrence of each item in order.",
        "solution": "def remove_duplicates(xs):\n    seen, out = set(), []\n    for x in xs:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out\n",
        "reference": [([[1, 2, 1, 3, 2]], [1, 2, 3]), ([[]], []), ([[5, 5, 5]], [5]), ([[3, 1, 2]], [3, 1, 2])],
    },
    {
        "id": "capitalize_words",
        "description": "Write a Python function `capitalize_words(s)` that returns the string s with the first letter of every space-separated word in upper case and the rest of each word in lower case.",
        "solution": "def capitalize_words(s):\n    return ' '.join(w.capitalize() for w in s.split(' '))\n",
        "reference": [(["hello world"], "Hello World"), (["PYTHON code"], "Python Code"), ([""], ""), (["a"], "A")],
    },
    {
        "id": "is_anagram",
        "description": "Write a Python function `is_anagram(a, b)` that returns True if the strings a and b contain exactly the same letters the same number of times, else False.",
        "solution": "def is_anagram(a, b):\n    return sorted(a) == sorted(b)\n",
        "reference": [(["listen", "silent"], True), (["abc", "abd"], False), (["", ""], True), (["aab", "abb"], False)],
    },
    {
        "id": "flatten",
        "description": "Write a Python function `flatten(xss)` that takes a list of lists and returns one list with all their items, in order.",
        "solution": "def flatten(xss):\n    return [x for xs in xss for x in xs]\n",
        "reference": [([[[1, 2], [3], []]], [1, 2, 3]), ([[]], []), ([[[1], [2], [3, 4]]], [1, 2, 3, 4])],
    },
    {
        "id": "second_largest",
        "description": "Write a Python function `second_largest(xs)` that returns the second largest distinct value in the list xs (which has at least two distinct values).",
        "solution": "def second_largest(xs):\n    return sorted(set(xs))[-2]\n",
        "reference": [([[1, 2, 3]], 2), ([[5, 5, 4]], 4), ([[-1, -2, -3]], -2), ([[10, 20, 20, 5]], 10)],
    },
    {
        "id": "running_sum",
        "description": "Write a Python function `running_sum(xs)` that returns the list of cumulative sums of the list xs: item i is xs[0] + ... + xs[i].",
        "solution": "def running_sum(xs):\n    out, total = [], 0\n    for x in xs:\n        total += x\n        out.append(total)\n    return out\n",
        "reference": [([[1, 2, 3]], [1, 3, 6]), ([[]], []), ([[5]], [5]), ([[1, -1, 1]], [1, 0, 1])],
    },
    {
        "id": "is_leap_year",
        "description": "Write a Python function `is_leap_year(year)` that returns True if year is a leap year in the Gregorian calendar, else False.",
        "solution": "def is_leap_year(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n",
        "reference": [([2024], True), ([2023], False), ([1900], False), ([2000], True)],
    },
    {
        "id": "count_char",
        "description": "Write a Python function `count_char(s, c)` that returns how many times the character c occurs in the string s.",
        "solution": "def count_char(s, c):\n    return s.count(c)\n",
        "reference": [(["banana", "a"], 3), (["banana", "z"], 0), (["", "a"], 0), (["aaa", "a"], 3)],
    },
    {
        "id": "to_binary",
        "description": "Write a Python function `to_binary(n)` that returns the binary representation of the non-negative integer n as a string without any prefix, e.g. to_binary(5) is '101'.",
        "solution": "def to_binary(n):\n    return bin(n)[2:]\n",
        "reference": [([5], "101"), ([0], "0"), ([1], "1"), ([255], "11111111"), ([8], "1000")],
    },
    {
        "id": "nth_prime",
        "description": "Write a Python function `nth_prime(n)` that returns the n-th prime number, counting from nth_prime(1) == 2.",
        "solution": "def nth_prime(n):\n    count, k = 0, 1\n    while count < n:\n        k += 1\n        if all(k % d for d in range(2, int(k ** 0.5) + 1)):\n            count += 1\n    return k\n",
        "reference": [([1], 2), ([2], 3), ([6], 13), ([100], 541)],
    },
    {
        "id": "mean",
        "description": "Write a Python function `mean(xs)` that returns the arithmetic mean of the non-empty list of numbers xs.",
        "solution": "def mean(xs):\n    return sum(xs) / len(xs)\n",
        "reference": [([[1, 2, 3]], 2), ([[5]], 5), ([[1, 2]], 1.5), ([[-1, 1]], 0)],
    },
    {
        "id": "median",
        "description": "Write a Python function `median(xs)` that returns the median of the non-empty list of numbers xs (the mean of the two middle values when the length is even).",
        "solution": "def median(xs):\n    s = sorted(xs)\n    n = len(s)\n    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2\n",
        "reference": [([[3, 1, 2]], 2), ([[4, 1, 3, 2]], 2.5), ([[7]], 7), ([[1, 1, 5, 9]], 3)],
    },
    {
        "id": "roman_numeral",
        "description": "Write a Python function `roman_numeral(n)` that returns the Roman numeral for the integer n between 1 and 3999, e.g. roman_numeral(4) is 'IV'.",
        "solution": "def roman_numeral(n):\n    parts = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'), (50, 'L'), (40, 'XL'), (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n    out = ''\n    for value, letters in parts:\n        while n >= value:\n            out += letters\n            n -= value\n    return out\n",
        "reference": [([1], "I"), ([4], "IV"), ([9], "IX"), ([58], "LVIII"), ([1994], "MCMXCIV")],
    },
    {
        "id": "caesar_cipher",
        "description": "Write a Python function `caesar_cipher(s, shift)` that shifts every lowercase letter a-z of s by shift places in the alphabet, wrapping around from z to a, and leaves every other character unchanged.",
        "solution": "def caesar_cipher(s, shift):\n    return ''.join(chr((ord(c) - 97 + shift) % 26 + 97) if 'a' <= c <= 'z' else c for c in s)\n",
        "reference": [(["abc", 1], "bcd"), (["xyz", 3], "abc"), (["hello, world", 0], "hello, world"), (["a b", 25], "z a")],
    },
    {
        "id": "merge_sorted",
        "description": "Write a Python function `merge_sorted(a, b)` that takes two sorted lists of numbers and returns one sorted list holding all their items.",
        "solution": "def merge_sorted(a, b):\n    return sorted(a + b)\n",
        "reference": [([[1, 3, 5], [2, 4]], [1, 2, 3, 4, 5]), ([[], [1]], [1]), ([[], []], []), ([[1, 1], [1]], [1, 1, 1])],
    },
    {
        "id": "char_frequency",
        "description": "Write a Python function `char_frequency(s)` that returns a dict mapping each character of the string s to the number of times it occurs.",
        "solution": "def char_frequency(s):\n    out = {}\n    for c in s:\n        out[c] = out.get(c, 0) + 1\n    return out\n",
        "reference": [(["aab"], {"a": 2, "b": 1}), ([""], {}), (["abc"], {"a": 1, "b": 1, "c": 1})],
    },
    {
        "id": "clamp",
        "description": "Write a Python function `clamp(x, low, high)` that returns x limited to the range from low to high: low if x is below it, high if x is above it, else x.",
        "solution": "def clamp(x, low, high):\n    return max(low, min(x, high))\n",
        "reference": [([5, 0, 10], 5), ([-3, 0, 10], 0), ([42, 0, 10], 10), ([0, 0, 0], 0)],
    },
]
